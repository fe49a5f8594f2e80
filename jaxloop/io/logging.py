"""Metric logging: one strict-JSON line per step in `metrics.jsonl`, plus TensorBoard scalars.

Call `log` at logging granularity (every few hundred train steps), never inside a
compiled loop: it converts every value to a Python float (a host sync).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

METRICS_FILE = "metrics.jsonl"


def finite_or_none(obj: Any) -> Any:
    """`obj` (nested dicts / lists) with every non-finite float replaced by None, so `json.dumps` writes strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    return obj


def _scalar(name: str, value: Any) -> float | int | bool | str | None:
    """A JSON-ready scalar: ints stay ints, non-finite floats become None (strict JSON)."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"MetricLogger.log: metric {name!r} must be a scalar, got shape {list(arr.shape)}")
    item = arr.reshape(()).item()
    if isinstance(item, bool):
        return item
    if isinstance(item, int):
        return item
    if isinstance(item, complex):
        raise ValueError(f"MetricLogger.log: metric {name!r} is complex ({item})")
    item = float(item)
    return item if math.isfinite(item) else None


class MetricLogger:
    """Appends `{"step", "time", **metrics}` lines to `logdir/metrics.jsonl` (and TensorBoard).

    `time` is seconds since the epoch. With `use_tensorboard`, numeric metrics are also
    written as scalars under `logdir` (tensorboardX); non-finite values are written there
    as they are (TensorBoard shows NaN / inf) but as `null` in the JSON file.
    """

    def __init__(self, logdir: str | os.PathLike, use_tensorboard: bool = True):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.path = self.logdir / METRICS_FILE
        self._file = open(self.path, "a", encoding="utf-8")
        self._writer = None
        if use_tensorboard:
            from tensorboardX import SummaryWriter
            self._writer = SummaryWriter(logdir=str(self.logdir))

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict:
        """Writes one record; returns it (as written to JSON)."""
        if self._file is None:
            raise RuntimeError(f"MetricLogger({self.logdir}) is closed")
        record: dict[str, Any] = {"step": int(step), "time": time.time()}
        for name, value in metrics.items():
            if name in ("step", "time"):
                raise ValueError(f"MetricLogger.log: metric name {name!r} is reserved")
            record[str(name)] = _scalar(name, value)
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._writer is not None:
            for name, value in metrics.items():
                if isinstance(value, str) or value is None:
                    continue
                self._writer.add_scalar(str(name), float(np.asarray(value).reshape(())), int(step))
        return record

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "MetricLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every record of a JSON-lines file (blank lines skipped); errors name the line."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
    return records
