"""The mix's typed hand-offs keep the token cache's on-disk JSON exactly as the untyped code wrote it."""

from __future__ import annotations

import json

from slimpipe.mix.jobs import HoldoutTokens, SourceTokens

# the layouts tokenize_shard wrote before #22.3 (keys in this order), as a cache filled then holds them
OLD_SOURCE = '{"docs": 3, "tokens": 120, "bytes": 400, "empty": 1, "holdout_dropped": 2, "rejected": 0, "status": "ok", "error": null}'
OLD_HOLDOUT = ('{"path": "validation/chunk1/example_val_0.jsonl.zst", "stats": {"arxiv": {"docs": 1, "tokens": 9, '
               '"bytes": 30, "empty": 0, "holdout_dropped": 0}}, "rejected": 1, "status": "partial", "error": "bad line"}')


def test_cache_entries_read_and_write_the_old_layout() -> None:
    src = SourceTokens.from_dict(json.loads(OLD_SOURCE))
    assert (src.docs, src.tokens, src.holdout_dropped, src.error) == (3, 120, 2, None)
    assert json.dumps(src.to_dict()) == OLD_SOURCE
    hold = HoldoutTokens.from_dict(json.loads(OLD_HOLDOUT))
    assert (hold.path, hold.rejected, hold.status) == ("validation/chunk1/example_val_0.jsonl.zst", 1, "partial")
    assert json.dumps(hold.to_dict()) == OLD_HOLDOUT
