"""Entry points of `jaxloop train` and `jaxloop export` (parsed by tyro from these signatures)."""

from __future__ import annotations

from typing import Annotated

import tyro

from jaxloop.train.loop import train
from jaxloop.io.policies import export as _export


def export(ckpt: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="CKPT")], out: str, step: int | None = None) -> int:
    """Exports a trained policy (deterministic, flat observation features -> normalised action).

    Args:
        ckpt: run or checkpoint directory written by `jaxloop train`.
        out: output directory of the artefact (jax.export module + params.npz + metadata.json).
        step: checkpoint step (default: the latest).
    """
    _export(ckpt, out, step)
    return 0


__all__ = ["export", "train"]
