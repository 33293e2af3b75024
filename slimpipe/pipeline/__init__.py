"""RedPajama → SlimPajama stages after dedup: interleave, shuffle, split, decontaminate, write."""
