"""Near-duplicate removal, the maths part: MinHash signatures, LSH band keys, connected components, and
keep policies. Everything here is a pure function over numpy arrays so that it tests in microseconds;
the steps (:mod:`.steps`, run by the runtime's executor) move the arrays between processes and spill them to disk.

Modules: :mod:`.params` (presets and LSH band/row choice), :mod:`.minhash` (shingling, signatures,
band keys, exact hashes and Jaccard), :mod:`.components` (union-find and the building blocks of the
distributed contraction), :mod:`.keep` (which document of a cluster survives).

The job around them: :mod:`.job` (plan, then the steps of :mod:`.steps`, one module each, on
:class:`slimpipe.runtime.Executor`), :mod:`.results` (each step's result as a dataclass, and the bundle
the report reads), :mod:`.report` (``build_report(params, results)`` and its rendering) and
:mod:`.command` (the CLI). Imports go one way: command → job → report → results; steps → results.
"""
