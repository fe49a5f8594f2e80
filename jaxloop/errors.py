"""The base class of every error jaxloop raises for bad input, a bad run state or a failed run.

The `jaxloop` command turns any of these into one line, `jaxloop CMD: error: MESSAGE`,
and exits with the error's `exit_code` (2: the input was wrong; 1: the run itself
failed, e.g. diverged); `jaxloop --debug` (or `JAXLOOP_DEBUG=1`) shows the traceback.
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class JaxloopError(Exception):
    """A user-facing jaxloop error; its message names the file / step / field and what was expected."""

    exit_code: int = 2


class RunError(JaxloopError, ValueError):
    """A run directory, its saved config or its data do not fit the requested run."""


class CheckpointError(JaxloopError, ValueError):
    """A checkpoint could not be saved or restored intact (non-finite state, failed checksum, unreadable data)."""


__all__ = ["CheckpointError", "JaxloopError", "RunError"]
