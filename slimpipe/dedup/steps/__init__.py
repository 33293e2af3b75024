"""The dedup job's steps, one module each, run by :class:`slimpipe.runtime.Executor`:

``read`` (the one read: parse → NFC → clean → short filter → exact hash → MinHash) → ``buckets`` (exact
and band-key buckets → source-aware star edges) → ``verify`` (optional exact Jaccard of candidates)
→ ``components`` (union-find, or distributed star contraction) → ``keep`` (one document per
component) → ``write`` (the second read: kept documents to a sink, the removed table).
"""
