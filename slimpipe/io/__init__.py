"""RedPajama readers (jsonl, jsonl.zst, parquet) and SlimPajama shard writers."""
