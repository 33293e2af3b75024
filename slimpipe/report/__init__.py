"""Comparison of trained runs: tables and plots across mixes and dedup modes."""
