"""The dedup job's steps, one module each, run by :class:`slimpipe.runtime.Executor`:

``read`` (the one read: parse → NFC → clean → short filter → exact hash → MinHash) → ``buckets`` (exact
and band-key buckets → source-aware star edges) → ``verify`` (optional exact Jaccard of candidates)
→ ``components`` (union-find, or distributed star contraction) → ``keep`` (one document per
component) → ``write`` (the second read: kept documents to a sink, the removed table) → ``sample`` (the
report's sample clusters, re-reading only their ranges).

Each task returns one result dataclass of :mod:`slimpipe.dedup.results` as a JSON-able dict (``to_dict``),
which the executor commits as the task's marker; the job reads it back with ``from_dict``.
"""
