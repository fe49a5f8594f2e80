"""Checkpoints (orbax, with resume), export (jax.export), logging (TensorBoard + JSONL), and
`policies`: trained policies loaded from runs, checkpoints or exported artefacts."""
