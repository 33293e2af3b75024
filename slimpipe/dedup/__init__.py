"""Near-duplicate removal, the maths part: MinHash signatures, LSH band keys, connected components, and
keep policies. Everything here is a pure function over numpy arrays so that it tests in microseconds;
the Ray stage runners (elsewhere) move the arrays between processes and spill them to disk.

Modules: :mod:`.params` (presets and LSH band/row choice), :mod:`.minhash` (shingling, signatures,
band keys, exact hashes and Jaccard), :mod:`.components` (union-find and the building blocks of the
distributed contraction), :mod:`.keep` (which document of a cluster survives).
"""
