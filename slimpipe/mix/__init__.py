"""Mixes: SlimPajama-DC (and custom) source proportions, tokenizers, and the packed token format."""
