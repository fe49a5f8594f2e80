"""The error every data loader raises on bad input, and the skip counter of `skip_invalid`.

Readers promise that malformed input surfaces as `DataError` (naming file, record and
field), never as a bare `ValueError` / `KeyError` / `AttributeError` from deep inside a
decoder: that is what lets `skip_invalid` isolate one bad file or record and keep the
rest. `MALFORMED` lists the exception types a decoder raises on bad bytes or bad JSON
shapes; `as_data_error` turns one of them into a located `DataError`.
"""

from __future__ import annotations

import collections
import dataclasses
import os

from jaxloop.errors import JaxloopError


class DataError(JaxloopError, ValueError):
    """Bad input data. The message names the file, the record index and the field.

    Attributes keep the parts apart so callers (e.g. `skip_invalid` counting) can group them.
    """

    def __init__(self, message: str, *, file: str | os.PathLike | None = None, record: int | None = None,
                 field: str | None = None):
        self.file = None if file is None else str(file)
        self.record = record
        self.field = field
        self.reason = message
        where = []
        if self.file is not None:
            where.append(self.file)
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)

    def located(self, *, file: str | os.PathLike | None = None, record: int | None = None) -> "DataError":
        """A copy with the file / record filled in where they were unknown when raised."""
        return type(self)(self.reason, file=self.file if self.file is not None else file,
                          record=self.record if self.record is not None else record, field=self.field)


# What decoders (numpy, protobuf, json, pyarrow, zipfile) raise on malformed input.
# Programming errors (NameError, ...) are deliberately not here: they must not be counted as bad data.
MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, EOFError, OSError)


def as_data_error(error: BaseException, *, file: str | os.PathLike | None = None, record: int | None = None,
                  field: str | None = None) -> DataError:
    """`error` as a `DataError` located at file / record / field (a `DataError` keeps its own field)."""
    if isinstance(error, DataError):
        return error.located(file=file, record=record)
    return DataError(f"malformed input ({type(error).__name__}: {error})", file=file, record=record, field=field)


@dataclasses.dataclass
class SkipReport:
    """What `skip_invalid=True` left out: one entry per skipped record, or per file that could not be read."""

    skipped: list[str] = dataclasses.field(default_factory=list)
    reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, error: DataError) -> None:
        self.skipped.append(str(error))
        self.reasons[error.field or type(error).__name__] += 1

    @property
    def count(self) -> int:
        return len(self.skipped)

    def __str__(self) -> str:
        if not self.skipped:
            return "skipped 0 records"
        lines = [f"skipped {self.count} invalid record(s):"]
        lines += [f"  {s}" for s in self.skipped[:20]]
        if self.count > 20:
            lines.append(f"  ... and {self.count - 20} more")
        lines.append("by field: " + ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items())))
        return "\n".join(lines)
