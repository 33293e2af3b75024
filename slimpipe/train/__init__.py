"""The bundled trainer: a Cerebras-GPT-family model (ALiBi + SwiGLU), its training loop, per-source
bits-per-byte evaluation, local or Ray Train launch, and export (see docs/trainer.md)."""
