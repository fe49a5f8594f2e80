"""Checkpoints with resume: orbax under the hood, a small interface on top.

A checkpoint directory holds one sub-directory per saved step (orbax layout: items
`state` — the pytree of arrays —, `config` — the run's JSON config —, and `prng_keys`
— which leaves were typed PRNG keys), plus `config.json` beside them (the latest
config, readable without orbax by `read_config`).

Typed PRNG key arrays (`jax.random.key`) cannot be written as arrays, so they are
saved as their raw key data and re-wrapped on restore: from the `target` when one is
given, else from the key paths recorded at save time.

    manager = CheckpointManager("runs/a/ckpt", max_to_keep=3, save_interval_steps=100)
    manager.install_signal_handlers(lambda: (step, train_state))
    manager.save(step, train_state, config=asdict(cfg))   # saves every 100 steps
    state = manager.restore(target=abstract_state)          # latest step
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

CONFIG_FILE = "config.json"
_STATE, _CONFIG, _KEYS = "state", "config", "prng_keys"


def path_str(path: tuple) -> str:
    """A key path as 'a/b/0/value', the same for a pytree and its orbax-restored nested dicts."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _is_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _key_impl_name(leaf: Any) -> str:
    """Name of a key leaf's PRNG implementation (concrete array or ShapeDtypeStruct)."""
    if isinstance(leaf, jax.Array):
        return str(jax.random.key_impl(leaf))
    # An abstract leaf (ShapeDtypeStruct): the implementation hangs off its key dtype.
    return str(leaf.dtype._impl.name)


def _unwrap_keys(tree: Any) -> tuple[Any, dict[str, str]]:
    """Replaces typed key leaves by their uint32 key data; returns the tree and {path: impl}."""
    impls: dict[str, str] = {}

    def unwrap(path, leaf):
        if _is_key(leaf):
            impls[path_str(path)] = _key_impl_name(leaf)
            return jax.random.key_data(leaf)
        return leaf

    return jax.tree_util.tree_map_with_path(unwrap, tree), impls


def _abstract(leaf: Any) -> Any:
    """The restore spec of one target leaf: its shape, dtype and (for jax arrays) sharding."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    if isinstance(leaf, jax.Array):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    if isinstance(leaf, (np.ndarray, np.generic)):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
    return leaf


class CheckpointManager:
    """Periodic, rotating checkpoints of a pytree (train state, `nnx.State`, optimizer state).

    directory: where step sub-directories go (created on the first save).
    max_to_keep: the last `max_to_keep` steps are kept, older ones deleted.
    save_interval_steps: `save` writes only when `step % save_interval_steps == 0` (or `force`).

    Saves are asynchronous (the arrays are copied to host, then written in the
    background); `wait()` blocks until every pending save is on disk.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3, save_interval_steps: int = 1):
        if max_to_keep < 1:
            raise ValueError(f"CheckpointManager: max_to_keep must be >= 1, got {max_to_keep}")
        if save_interval_steps < 1:
            raise ValueError(f"CheckpointManager: save_interval_steps must be >= 1, got {save_interval_steps}")
        self.directory = Path(directory).expanduser().absolute()
        self.max_to_keep = max_to_keep
        self.save_interval_steps = save_interval_steps
        self._manager = None
        self._previous_handlers: dict[int, Any] = {}
        self._handling_signal = False

    # -- orbax plumbing ----------------------------------------------------------------
    def _orbax(self, create: bool):
        """The orbax manager, built on first use (a restore never creates the directory)."""
        if self._manager is None:
            if not create and not self.directory.is_dir():
                return None
            import orbax.checkpoint as ocp
            options = ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, save_interval_steps=1,
                                                   create=True)
            self._manager = ocp.CheckpointManager(str(self.directory), options=options)
        return self._manager

    # -- queries -----------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Saved steps, ascending (empty if the directory does not exist)."""
        manager = self._orbax(create=False)
        if manager is None:
            return []
        return sorted(int(s) for s in manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        return step % self.save_interval_steps == 0

    # -- save / restore ----------------------------------------------------------------
    def save(self, step: int, state: Any, config: dict | None = None, force: bool = False) -> bool:
        """Saves `state` at `step` if it is a save step (or `force`); returns whether it saved.

        `config` (JSON-serialisable) is stored with the step and as `config.json` in the
        directory. A step that is already on disk is not written again.
        """
        step = int(step)
        if not (force or self.should_save(step)):
            return False
        manager = self._orbax(create=True)
        if step in self.all_steps():
            return False
        import orbax.checkpoint as ocp
        data, key_impls = _unwrap_keys(state)
        items = {_STATE: ocp.args.StandardSave(data), _KEYS: ocp.args.JsonSave(key_impls)}
        if config is not None:
            try:
                json.dumps(config)
            except TypeError as e:
                raise TypeError(f"CheckpointManager.save: config is not JSON-serialisable ({e})") from None
            items[_CONFIG] = ocp.args.JsonSave(config)
        saved = manager.save(step, args=ocp.args.Composite(**items), force=True)
        if config is not None and jax.process_index() == 0:
            tmp = self.directory / f".{CONFIG_FILE}.tmp"
            tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
            os.replace(tmp, self.directory / CONFIG_FILE)
        return bool(saved)

    def restore(self, step: int | None = None, target: Any = None) -> Any:
        """The state saved at `step` (latest if None).

        `target`: a pytree of the same structure (concrete arrays or `jax.ShapeDtypeStruct`,
        e.g. from `jax.eval_shape` / `nnx.eval_shape`); leaves come back with exactly its
        dtypes, shapes and shardings, and typed PRNG keys are re-wrapped. Without a target the
        state comes back as nested dicts of arrays (keys still re-wrapped by path).
        """
        self.wait()
        steps = self.all_steps()
        if not self.directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory {self.directory} does not exist")
        if not steps:
            raise FileNotFoundError(f"no checkpoints in {self.directory}")
        if step is None:
            step = steps[-1]
        elif int(step) not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; saved steps: {steps}")
        import orbax.checkpoint as ocp
        manager = self._orbax(create=False)
        key_impls = manager.restore(int(step), args=ocp.args.Composite(**{_KEYS: ocp.args.JsonRestore()}))[_KEYS]
        key_impls = key_impls or {}
        if target is None:
            restored = manager.restore(int(step), args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardRestore()}))[_STATE]

            def rewrap(path, leaf):
                impl = key_impls.get(path_str(path))
                return leaf if impl is None else jax.random.wrap_key_data(leaf, impl=impl)

            return jax.tree_util.tree_map_with_path(rewrap, restored)

        def spec(path, leaf):
            if _is_key(leaf):
                return jax.eval_shape(jax.random.key_data, _abstract(leaf))
            return _abstract(leaf)

        abstract = jax.tree_util.tree_map_with_path(spec, target)
        try:
            restored = manager.restore(int(step), args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardRestore(abstract)}))[_STATE]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"checkpoint {self.directory}/{step}: state does not match the restore target "
                             f"({type(e).__name__}: {e})") from e

        def rewrap_target(tleaf, leaf):
            if _is_key(tleaf):
                return jax.random.wrap_key_data(leaf, impl=_key_impl_name(tleaf))
            return leaf

        return jax.tree.map(rewrap_target, target, restored)

    def restore_config(self, step: int | None = None) -> dict | None:
        """The config saved with `step` (latest if None), or None if none was saved."""
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoints in {self.directory}")
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; saved steps: {steps}")
        path = self.directory / str(step) / _CONFIG
        if not path.exists():
            return None
        import orbax.checkpoint as ocp
        return self._orbax(create=False).restore(step, args=ocp.args.Composite(
            **{_CONFIG: ocp.args.JsonRestore()}))[_CONFIG]

    def wait(self) -> None:
        """Blocks until every pending (asynchronous) save is on disk."""
        if self._manager is not None:
            self._manager.wait_until_finished()

    # -- preemption --------------------------------------------------------------------
    def install_signal_handlers(self, get_state: Callable[[], tuple[int, Any]]) -> None:
        """On SIGTERM / SIGINT, saves `get_state()` -> (step, state) synchronously, then exits.

        SIGTERM exits with code 143 (128 + 15, as if killed by it); SIGINT raises
        `KeyboardInterrupt` after the save. `close()` puts the previous handlers back.
        Must be called from the main thread (Python delivers signals there only).
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("CheckpointManager.install_signal_handlers must be called from the main thread")

        def handler(signum, frame):
            del frame
            if not self._handling_signal:  # a second signal during the save does not interrupt it
                self._handling_signal = True
                try:
                    step, state = get_state()
                    self.save(step, state, force=True)
                    self.wait()
                finally:
                    self._handling_signal = False
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + int(signum))

        for signum in (signal.SIGTERM, signal.SIGINT):
            if signum not in self._previous_handlers:
                self._previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, handler)

    def _restore_signal_handlers(self) -> None:
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous_handlers.clear()

    def close(self) -> None:
        """Waits for pending saves, releases orbax resources and restores signal handlers."""
        self._restore_signal_handlers()
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()
            self._manager = None

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_config(directory: str | os.PathLike) -> dict:
    """The latest config saved in a checkpoint directory (its `config.json`)."""
    directory = Path(directory).expanduser()
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: no config was saved in checkpoint directory {directory}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
