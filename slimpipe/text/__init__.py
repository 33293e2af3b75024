"""Text preparation shared by every stage: NFC normalisation, cleaning for hashing, short-doc filter."""

from slimpipe.text.normalize import MIN_CHARS, clean_for_hash, is_short, normalize

__all__ = ["MIN_CHARS", "clean_for_hash", "is_short", "normalize"]
