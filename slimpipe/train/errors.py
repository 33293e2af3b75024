"""Errors the train-side commands raise, importable without torch (so ``--help`` stays fast)."""


class ExportError(ValueError):
    """A run cannot be exported or evaluated; the message names what is missing."""
