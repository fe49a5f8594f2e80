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
    state = manager.restore(target=abstract_state)          # latest step that verifies

`to_flat_dict` / `from_flat_dict` give a pytree's checkpoint form, a flat `{path: array}`
dict independent of container classes.

Guarantees:

- Only finite state is written: `save` refuses a state with a NaN / inf in any float
  leaf (`CheckpointError` naming the leaves), so every step on disk is a good one and
  rotation (`max_to_keep`) never replaces a good step by a bad one.
- Every step has a checksum record, `checksums/STEP.json` (dtype, shape and blake2b of
  each saved leaf), written before orbax commits the step: a step orbax committed (even
  if the process is then killed with -9) can always be verified.
- `restore()` verifies what it read against that record. The latest step that fails
  (a flipped byte, a truncated or missing file) is reported on stderr (which step, why)
  and the newest step that verifies is used instead (`restored_step` says which); if
  none verifies, a `CheckpointError` lists why each failed. A requested `step` is never
  substituted: it verifies or raises.
- On SIGTERM / SIGINT the current state is saved synchronously and stderr says which
  step was saved where.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxloop.errors import CheckpointError

CONFIG_FILE = "config.json"
CHECKSUM_DIR = "checksums"
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


def to_flat_dict(tree: Any) -> dict[str, np.ndarray]:
    """`{"params/trunk/0/kernel/value": array, ...}` of any pytree (host numpy arrays)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = {}
    for path, leaf in leaves:
        name = path_str(path)
        if name in out:
            raise ValueError(f"to_flat_dict: duplicate leaf path {name!r}")
        out[name] = np.asarray(jax.device_get(leaf))
    return out


def from_flat_dict(template: Any, flat: dict[str, Any], prefix: str = "", strict: bool = True) -> Any:
    """Rebuilds `template`'s structure from a flat dict (`prefix/` names the subtree in `flat`).

    With `strict=False`, leaves missing from `flat` (or of a different shape) keep the
    template's value: a BC checkpoint initialises a PPO policy whose value head is new.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    new = []
    for path, leaf in leaves:
        name = (prefix + "/" if prefix else "") + path_str(path)
        if name in flat and np.shape(flat[name]) == np.shape(leaf):
            new.append(jnp.asarray(flat[name], dtype=leaf.dtype))
        elif strict:
            got = "missing" if name not in flat else f"shape {np.shape(flat[name])}"
            raise ValueError(f"checkpoint: leaf {name!r} expected shape {np.shape(leaf)}, {got}")
        else:
            new.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, new)


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


def _leaf_record(array: np.ndarray) -> dict:
    array = np.asarray(array, order="C")  # (ascontiguousarray would make a scalar 1-d)
    return {"dtype": str(array.dtype), "shape": list(array.shape),
            "blake2b": hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest()}


def _whole(leaf: Any) -> Any:
    """A leaf as one value every process agrees on: a replicated multi-host array from this process's own
    copy, a sharded one gathered from all processes (a collective: every process must call it)."""
    if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
        return leaf
    if leaf.is_fully_replicated:
        return leaf.addressable_data(0)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(leaf, tiled=True)


def _host_leaves(tree: Any) -> dict[str, np.ndarray]:
    """{path: host array} of every leaf, whole and the same on every process (see `_whole`), so a multi-host
    step's checksum record covers every leaf and verifies on every process."""
    named = [(path_str(p), _whole(x)) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]
    values = jax.device_get([x for _, x in named])
    return {n: np.asarray(v) for (n, _), v in zip(named, values)}


def _nonfinite(leaves: dict[str, np.ndarray]) -> list[str]:
    bad = []
    for name, a in leaves.items():
        if jax.dtypes.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a.astype(np.float64))):
            bad.append(name)
    return bad


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    # TensorStore appends a many-line spec dump after this marker: the first sentence is the cause.
    head = (text[0] if text else "").split(" See full TensorStore details")[0]
    return f"{type(e).__name__}: {head}"


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
        self.restored_step: int | None = None  # the step the last `restore` used (after any fallback)

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
    def save(self, step: int, state: Any, config: dict | None = None, force: bool = False,
             allow_nonfinite: bool = False) -> bool:
        """Saves `state` at `step` if it is a save step (or `force`); returns whether it saved.

        `config` (JSON-serialisable) is stored with the step and as `config.json` in the
        directory. A step that is already on disk is not written again. A state with a
        non-finite float leaf raises `CheckpointError` and writes nothing (unless
        `allow_nonfinite`): a checkpoint is only ever a state worth resuming.
        """
        step = int(step)
        if not (force or self.should_save(step)):
            return False
        manager = self._orbax(create=True)
        if step in self.all_steps():
            return False
        import orbax.checkpoint as ocp
        data, key_impls = _unwrap_keys(state)
        host = _host_leaves(data)
        bad = _nonfinite(host) if not allow_nonfinite else []
        if bad:
            raise CheckpointError(f"checkpoint {self.directory}: step {step} not saved: {len(bad)} leaves hold NaN or "
                                  f"inf (expected finite values), e.g. {', '.join(bad[:3])}")
        items = {_STATE: ocp.args.StandardSave(data), _KEYS: ocp.args.JsonSave(key_impls)}
        if config is not None:
            try:
                json.dumps(config)
            except TypeError as e:
                raise TypeError(f"CheckpointManager.save: config is not JSON-serialisable ({e})") from None
            items[_CONFIG] = ocp.args.JsonSave(config)
        # The record goes down before orbax commits the step, so every committed step has one.
        self._write_checksums(step, {name: _leaf_record(a) for name, a in host.items()})
        saved = manager.save(step, args=ocp.args.Composite(**items), force=True)
        if config is not None and jax.process_index() == 0:
            tmp = self.directory / f".{CONFIG_FILE}.tmp"
            tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
            os.replace(tmp, self.directory / CONFIG_FILE)
        return bool(saved)

    def restore(self, step: int | None = None, target: Any = None) -> Any:
        """The state saved at `step` (the latest that verifies if None; see the module docstring).

        `target`: a pytree of the same structure (concrete arrays or `jax.ShapeDtypeStruct`,
        e.g. from `jax.eval_shape` / `nnx.eval_shape`); leaves come back with exactly its
        dtypes, shapes and shardings, and typed PRNG keys are re-wrapped. Without a target the
        state comes back as nested dicts of arrays (keys still re-wrapped by path).
        `restored_step` is set to the step used.
        """
        self.wait()
        steps = self.all_steps()
        if not self.directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory {self.directory} does not exist")
        if not steps:
            raise FileNotFoundError(f"no checkpoints in {self.directory}")
        if step is not None:
            if int(step) not in steps:
                raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; saved steps: {steps}")
            result = self._restore_checked(int(step), target, require_record=self._has_records())
            self.restored_step = int(step)
            return result
        # Directories written before checksums existed restore unverified rather than not at all.
        require = self._has_records()
        if not require:
            print(f"warning: checkpoint {self.directory}: no checksum records (an older checkpoint); restoring step "
                  f"{steps[-1]} unverified", file=sys.stderr)
        failures = []
        for candidate in reversed(steps):
            try:
                result = self._restore_checked(candidate, target, require_record=require)
            except CheckpointError as e:
                failures.append(f"step {candidate}: {e.reason}")
                print(f"warning: checkpoint {self.directory}: step {candidate} failed verification ({e.reason})",
                      file=sys.stderr)
                continue
            if failures:
                print(f"warning: checkpoint {self.directory}: using step {candidate}, the newest step that verifies",
                      file=sys.stderr)
            self.restored_step = candidate
            return result
        raise CheckpointError(f"checkpoint {self.directory}: no saved step verifies ({'; '.join(failures)})")

    def _restore_checked(self, step: int, target: Any, require_record: bool) -> Any:
        """Restores `step` and checks it against its checksum record; failing raises `CheckpointError` (`.reason`)."""
        import orbax.checkpoint as ocp

        def fail(reason: str):
            error = CheckpointError(f"checkpoint {self.directory}/{step}: {reason}")
            error.reason = reason
            return error

        record = self._read_checksums(step)
        if record is None and require_record:
            raise fail(f"no checksum record {CHECKSUM_DIR}/{step}.json (the save did not complete)")
        abstract = None
        if target is not None:
            def spec(path, leaf):
                if _is_key(leaf):
                    return jax.eval_shape(jax.random.key_data, _abstract(leaf))
                return _abstract(leaf)

            abstract = jax.tree_util.tree_map_with_path(spec, target)
            if record is not None:
                self._check_target(step, record, abstract)
        manager = self._orbax(create=False)
        try:
            key_impls = manager.restore(step, args=ocp.args.Composite(**{_KEYS: ocp.args.JsonRestore()}))[_KEYS]
            restore_args = ocp.args.StandardRestore() if abstract is None else ocp.args.StandardRestore(abstract)
            try:
                restored = manager.restore(step, args=ocp.args.Composite(**{_STATE: restore_args}))[_STATE]
            except ValueError as e:
                if abstract is not None or "opology" not in str(e):
                    raise
                # Saved by another set of processes / devices (a multi-host run) and read without a target:
                # every leaf whole on this process's first device.
                restored = manager.restore(step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(
                    self._local_target(step))}))[_STATE]
        except (ValueError, KeyError, TypeError) as e:
            if record is None and target is not None:  # unverifiable: keep the plain mismatch message
                raise ValueError(f"checkpoint {self.directory}/{step}: state does not match the restore target "
                                 f"({type(e).__name__}: {e})") from e
            raise fail(f"unreadable ({_first_line(e)})") from e
        except Exception as e:  # noqa: BLE001 - TensorStore / OS errors of a damaged step all mean "fall back"
            raise fail(f"unreadable ({_first_line(e)})") from e
        if record is not None:
            got = _host_leaves(restored)
            differ = [n for n, a in got.items() if n in record and _leaf_record(a) != record[n]]
            missing = sorted(set(record) - set(got))
            if differ or missing:
                what = (f"{len(differ)} leaves differ from their checksum, e.g. {', '.join(differ[:3])}" if differ
                        else f"leaves missing: {', '.join(missing[:3])}")
                raise fail(f"checksum mismatch: {what}")
        key_impls = key_impls or {}
        if target is None:
            def rewrap(path, leaf):
                impl = key_impls.get(path_str(path))
                return leaf if impl is None else jax.random.wrap_key_data(leaf, impl=impl)

            return jax.tree_util.tree_map_with_path(rewrap, restored)

        def rewrap_target(tleaf, leaf):
            if _is_key(tleaf):
                return jax.random.wrap_key_data(leaf, impl=_key_impl_name(tleaf))
            return leaf

        return jax.tree.map(rewrap_target, target, restored)

    def _local_target(self, step: int) -> Any:
        """The saved state's leaves as `ShapeDtypeStruct`s on this process's first device (from orbax metadata)."""
        import orbax.checkpoint as ocp
        metadata = ocp.StandardCheckpointer().metadata(self.directory / str(step) / _STATE).item_metadata
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), metadata)

    def _check_target(self, step: int, record: dict, abstract: Any) -> None:
        """A target whose leaves differ from what was saved is the caller's error, not damage: no fallback."""
        wanted = {path_str(p): (str(np.dtype(x.dtype)), list(x.shape))
                  for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0] if hasattr(x, "shape")}
        saved = {n: (r["dtype"], r["shape"]) for n, r in record.items()}
        if set(wanted) != set(saved):
            extra, lacking = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
            detail = f"target leaves not saved: {extra[:3]}, saved leaves not in the target: {lacking[:3]}"
        else:
            diff = [n for n in wanted if list(wanted[n]) != list(saved[n])]
            if not diff:
                return
            n = diff[0]
            detail = f"leaf {n!r}: saved {saved[n][1]} {saved[n][0]}, target {wanted[n][1]} {wanted[n][0]}"
        raise ValueError(f"checkpoint {self.directory}/{step}: state does not match the restore target ({detail})")

    # -- checksum records ----------------------------------------------------------------
    def _checksum_path(self, step: int) -> Path:
        return self.directory / CHECKSUM_DIR / f"{int(step)}.json"

    def _write_checksums(self, step: int, record: dict) -> None:
        if jax.process_index() != 0:
            return
        path = self._checksum_path(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, path)

    def _read_checksums(self, step: int) -> dict | None:
        path = self._checksum_path(step)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return {"": {"unreadable checksum record": str(path)}}  # matches no leaf: the step fails

    def _has_records(self) -> bool:
        return (self.directory / CHECKSUM_DIR).is_dir() and any((self.directory / CHECKSUM_DIR).glob("*.json"))

    def newest_checked_step(self) -> int | None:
        """The newest saved step that has a checksum record (what a resume would try first)."""
        self.wait()
        steps = [s for s in self.all_steps() if self._checksum_path(s).is_file()]
        return steps[-1] if steps else None

    def quarantine_after(self, step: int) -> tuple[list[int], Path]:
        """Moves the saved steps after `step` (ones a resume fell back past) out of the checkpoint directory, into
        `damaged_checkpoints/` beside it, with their checksum records; returns them and that folder.

        They are kept, not deleted: a step that failed for a passing reason (a read error of
        the file system) is still there to inspect or restore by hand.
        """
        import shutil
        gone = [s for s in self.all_steps() if s > step]
        target = self.directory.parent / "damaged_checkpoints"
        if gone and jax.process_index() == 0:
            self.wait()
            for s in gone:
                dest = target / str(s)
                suffix = 1
                while dest.exists():  # an earlier resume moved the same step number aside
                    dest, suffix = target / f"{s}.{suffix}", suffix + 1
                dest.mkdir(parents=True)
                shutil.move(str(self.directory / str(s)), str(dest / "state"))
                record = self._checksum_path(s)
                if record.exists():
                    shutil.move(str(record), str(dest / record.name))
            if self._manager is not None:  # orbax caches its step list: rebuild it on next use
                self._manager.close()
                self._manager = None
        return gone, target

    def _drop_stale_checksums(self) -> None:
        folder = self.directory / CHECKSUM_DIR
        if jax.process_index() != 0 or not folder.is_dir():
            return
        kept = set(self.all_steps())
        for path in folder.glob("*.json"):
            if path.stem.isdigit() and int(path.stem) not in kept:
                path.unlink(missing_ok=True)

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

        stderr says which step was saved where; `get_state()` may return None (a state not
        worth saving, e.g. a diverged run), and then names the newest checkpoint instead.

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
                    name = signal.Signals(signum).name
                    got = get_state()
                    if got is None:
                        print(f"{name}: nothing saved; the newest checkpoint in {self.directory} is step "
                              f"{self.newest_checked_step()}", file=sys.stderr)
                    else:
                        step, state = got
                        try:
                            wrote = self.save(step, state, force=True)
                            self.wait()
                            print(f"{name}: {'saved' if wrote else 'already saved'} checkpoint step {int(step)} in "
                                  f"{self.directory}", file=sys.stderr)
                        except CheckpointError as e:
                            print(f"{name}: {e}; the newest checkpoint is step {self.newest_checked_step()}",
                                  file=sys.stderr)
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
            self._drop_stale_checksums()
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
