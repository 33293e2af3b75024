"""Hugging Face transformers export: ``slimpipe export RUN --format hf -o DIR`` (see :mod:`slimpipe.hf.export`).

``configuration_slimpipe.py`` and ``modeling_slimpipe.py`` here are the files shipped inside every
export (``trust_remote_code``); importing this package itself needs no transformers.
"""
