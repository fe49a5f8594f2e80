"""Policy export: a compiled, self-contained artefact that runs with jax + numpy alone.

`export_policy` lowers `jax.jit(apply_fn)(params, *inputs)` with `jax.export` (with a
symbolic batch dimension shared by every input, when the function allows it) and
writes to `out_dir`:

- `policy.jaxexport`: `Exported.serialize()` bytes (needs the `flatbuffers` package);
- `policy.mlir`: the same StableHLO module with its calling convention stored in
  `metadata.json`, so a reader without `flatbuffers` can still call it;
- `params.npz`: the parameters flattened to '/'-joined key paths (no pickle);
- `metadata.json`: input / output shapes and dtypes, parameter names and dtypes, the
  output structure, the jax version and the caller's metadata (e.g. the action space).

`load_policy(out_dir)` rebuilds the parameters and returns `policy(*inputs) -> outputs`;
it imports nothing from jaxloop's models, so a deployment script can copy this file (or
just its `load_policy`) and run the policy with jax + numpy installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

EXPORT_FILE = "policy.jaxexport"
MLIR_FILE = "policy.mlir"
PARAMS_FILE = "params.npz"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1
BATCH_DIM = "b"


def path_str(path: tuple) -> str:
    """Key-path naming shared with checkpoints (imported here, not at module level, so a
    downstream script can load this file with only jax + numpy)."""
    from jaxloop.io.checkpoint import path_str as shared
    return shared(path)


def _flatten_params(params: Any) -> tuple[dict[str, jax.Array], Any, list[str]]:
    """{'/'-joined key path: leaf}, the treedef and the names in leaf order."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    flat: dict[str, Any] = {}
    names = []
    for path, leaf in leaves:
        name = path_str(path) or "params"
        if name in flat:
            raise ValueError(f"export_policy: two parameters share the key path {name!r}")
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            raise TypeError(f"export_policy: parameter {name!r} is a PRNG key; export only the weights "
                            "(e.g. nnx.split(model, nnx.Param, ...))")
        flat[name] = jnp.asarray(leaf)
        names.append(name)
    return flat, treedef, names


def _structure(tree: Any) -> Any:
    """A JSON description of an output pytree made of dicts, lists, tuples and arrays."""
    if isinstance(tree, dict):
        return {"dict": {str(k): _structure(v) for k, v in tree.items()}}
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return {"list" if isinstance(tree, list) else "tuple": [_structure(v) for v in tree]}
    if isinstance(tree, (jax.Array, np.ndarray, np.generic, float, int, bool)) or hasattr(tree, "shape"):
        return "leaf"
    # Other pytree nodes (dataclasses, named tuples): a dict keyed by their key paths.
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"dict": {path_str(p): "leaf" for p, _ in leaves}}


def _plain(tree: Any, structure: Any) -> list:
    """The leaves of `tree` in the order `_unflatten(structure, ...)` consumes them."""
    if structure == "leaf":
        return [tree]
    if "dict" in structure:
        if isinstance(tree, dict):
            return [x for k, s in structure["dict"].items() for x in _plain(tree[k], s)]
        return [leaf for _, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]
    kind = "list" if "list" in structure else "tuple"
    return [x for v, s in zip(tree, structure[kind]) for x in _plain(v, s)]


def _unflatten(structure: Any, leaves: list) -> Any:
    it = iter(leaves)

    def build(s):
        if s == "leaf":
            return next(it)
        if "dict" in s:
            return {k: build(v) for k, v in s["dict"].items()}
        if "list" in s:
            return [build(v) for v in s["list"]]
        return tuple(build(v) for v in s["tuple"])

    return build(structure)


def _storable(arr: np.ndarray) -> tuple[np.ndarray, str]:
    """numpy can write only its own dtypes without pickle: bfloat16 & co. go as same-size uints."""
    name = str(arr.dtype)
    if arr.dtype.kind in "biufc" and type(arr.dtype).__module__.startswith("numpy"):
        return arr, name
    return arr.view(np.dtype(f"u{arr.dtype.itemsize}")), name


def _shape_json(shape) -> list:
    return [d if isinstance(d, int) else str(d) for d in shape]


def export_policy(apply_fn: Callable[..., Any], params: Any, example_inputs: Sequence[Any] | Any,
                  out_dir: str | os.PathLike, metadata: dict | None = None, batch_polymorphic: bool = True,
                  platforms: Sequence[str] | None = None) -> Path:
    """Exports `apply_fn(params, *inputs)`; returns `out_dir`.

    example_inputs: one array or a sequence of arrays; only shapes and dtypes are used.
      With `batch_polymorphic`, the leading dimension of every input becomes one symbolic
      batch size `b` (falls back to the example's fixed shapes if the function needs a
      concrete batch).
    platforms: lowering targets. Default: cpu, cuda and tpu (so one artefact runs anywhere),
      falling back to the current backend plus cpu if the function does not lower for all.
    """
    if not isinstance(example_inputs, (list, tuple)):
        example_inputs = (example_inputs,)
    example_inputs = [np.asarray(x) if not isinstance(x, jax.Array) else x for x in example_inputs]
    out_dir = Path(out_dir)
    flat, treedef, names = _flatten_params(params)
    if platforms is None:
        current = jax.export.default_export_platform()
        platform_options = [tuple(dict.fromkeys([current, "cpu", "cuda", "tpu"])), tuple(dict.fromkeys([current, "cpu"]))]
    else:
        platform_options = [tuple(platforms)]

    output_structure: dict[str, Any] = {}

    def fn(flat_params, *inputs):
        tree = jax.tree_util.tree_unflatten(treedef, [flat_params[n] for n in names])
        out = apply_fn(tree, *inputs)
        output_structure["s"] = _structure(out)
        return tuple(_plain(out, output_structure["s"]))

    params_spec = {n: jax.ShapeDtypeStruct(a.shape, a.dtype) for n, a in flat.items()}

    def specs(polymorphic: bool):
        if not polymorphic:
            return [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in example_inputs]
        (b,) = jax.export.symbolic_shape(BATCH_DIM)
        return [jax.ShapeDtypeStruct((b, *x.shape[1:]) if x.ndim else (), x.dtype) for x in example_inputs]

    polymorphic_options = [True, False] if batch_polymorphic and all(x.ndim >= 1 for x in example_inputs) else [False]
    exported, first_error = None, None
    for polymorphic in polymorphic_options:  # a symbolic batch first, then the example's fixed shapes
        for platforms in platform_options:
            try:
                exported = jax.export.export(jax.jit(fn), platforms=platforms)(params_spec, *specs(polymorphic))
                break
            except Exception as e:  # noqa: BLE001 - retried with fewer requirements, re-raised below
                first_error = first_error or e
        if exported is not None:
            break
    if exported is None:
        raise first_error
    if exported.ordered_effects or exported.unordered_effects:
        raise ValueError(f"export_policy: the policy has side effects {exported.ordered_effects} "
                         f"{exported.unordered_effects}; remove debug callbacks / prints before export")

    out_dir.mkdir(parents=True, exist_ok=True)
    has_serialized = True
    try:
        (out_dir / EXPORT_FILE).write_bytes(bytes(exported.serialize()))
    except ImportError:  # serialize() needs flatbuffers; policy.mlir below still works
        has_serialized = False
        (out_dir / EXPORT_FILE).unlink(missing_ok=True)
    (out_dir / MLIR_FILE).write_bytes(bytes(exported.mlir_module_serialized))

    stored = {}
    param_dtypes = {}
    for name in names:
        stored[name], param_dtypes[name] = _storable(np.asarray(flat[name]))
    with open(out_dir / PARAMS_FILE, "wb") as f:
        np.savez(f, **stored)

    meta = {
        "format_version": FORMAT_VERSION,
        "jax_version": jax.__version__,
        "batch_polymorphic": polymorphic,
        "inputs": [{"shape": _shape_json(a.shape), "dtype": str(a.dtype)} for a in exported.in_avals[len(names):]],
        "outputs": [{"shape": _shape_json(a.shape), "dtype": str(a.dtype)} for a in exported.out_avals],
        "output_structure": output_structure["s"],
        "params": {"names": names, "dtypes": param_dtypes,
                   "shapes": {n: list(flat[n].shape) for n in names}},
        "serialized": has_serialized,
        "calling_convention": {
            "fun_name": exported.fun_name,
            "platforms": list(exported.platforms),
            "nr_devices": exported.nr_devices,
            "calling_convention_version": exported.calling_convention_version,
            "module_kept_var_idx": list(exported.module_kept_var_idx),
            "uses_global_constants": exported.uses_global_constants,
        },
        "metadata": metadata or {},
    }
    try:
        text = json.dumps(meta, indent=2)
    except TypeError as e:
        raise TypeError(f"export_policy: metadata is not JSON-serialisable ({e})") from None
    (out_dir / METADATA_FILE).write_text(text)
    return out_dir


def _avals(entries: list[dict], scope) -> list:
    """ShapedArrays from metadata entries; symbolic dims parsed in one `scope`."""
    avals = []
    for e in entries:
        shape = jax.export.symbolic_shape(", ".join(map(str, e["shape"])), scope=scope) if e["shape"] else ()
        avals.append(jax.core.ShapedArray(tuple(shape), jnp.dtype(e["dtype"])))
    return avals


def load_policy(out_dir: str | os.PathLike) -> Callable[..., Any]:
    """`policy(*inputs) -> outputs` from a directory written by `export_policy`.

    Inputs are checked against the exported shapes and dtypes (the batch dimension may
    be any size when the export is batch-polymorphic). The returned callable carries
    `.params` (the rebuilt parameter dict), `.metadata` and `.exported`.
    """
    out_dir = Path(out_dir)
    meta_path = out_dir / METADATA_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: {out_dir} is not an exported policy directory")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format_version {meta.get('format_version')}, expected {FORMAT_VERSION}")

    names = meta["params"]["names"]
    with np.load(out_dir / PARAMS_FILE, allow_pickle=False) as npz:
        missing = [n for n in names if n not in npz.files]
        if missing:
            raise ValueError(f"{out_dir / PARAMS_FILE}: missing parameters {missing[:5]}")
        params = {}
        for n in names:
            arr = npz[n]
            dtype = jnp.dtype(meta["params"]["dtypes"][n])
            params[n] = jnp.asarray(arr.view(dtype) if arr.dtype != dtype else arr)

    exported = None
    if meta.get("serialized") and (out_dir / EXPORT_FILE).is_file():
        try:
            exported = jax.export.deserialize(bytearray((out_dir / EXPORT_FILE).read_bytes()))
        except ImportError:
            exported = None
    if exported is None:
        exported = _exported_from_mlir(meta, (out_dir / MLIR_FILE).read_bytes())

    inputs_meta = meta["inputs"]
    call = jax.jit(exported.call)  # one dispatch per call instead of re-tracing the exported function

    def policy(*inputs):
        if len(inputs) != len(inputs_meta):
            raise TypeError(f"exported policy {out_dir} takes {len(inputs_meta)} inputs, got {len(inputs)}")
        checked = []
        batch = None
        for i, (x, spec) in enumerate(zip(inputs, inputs_meta)):
            x = jnp.asarray(x)
            expected = spec["shape"]
            ok = x.ndim == len(expected) and x.dtype == jnp.dtype(spec["dtype"])
            for d, (got, want) in enumerate(zip(x.shape, expected)):
                if isinstance(want, str):
                    batch = got if batch is None else batch
                    ok &= got == batch
                else:
                    ok &= got == want
            if not ok:
                raise ValueError(f"exported policy {out_dir}: input {i} has shape {list(x.shape)} dtype {x.dtype}; "
                                 f"expected shape {expected} dtype {spec['dtype']}"
                                 + (" (the batch dimension 'b' is shared by all inputs)" if batch is not None else ""))
            checked.append(x)
        out = call(params, *checked)
        return _unflatten(meta["output_structure"], list(out))

    policy.params = params
    policy.metadata = meta
    policy.exported = exported
    return policy


def _exported_from_mlir(meta: dict, mlir: bytes):
    """Rebuilds the `Exported` from the StableHLO bytes and the calling convention in metadata."""
    cc = meta["calling_convention"]
    params = meta["params"]
    names = params["names"]
    scope = jax.export.SymbolicScope()
    # Leaves of a dict flatten in sorted-key order: the order of the exported arguments.
    param_entries = [{"shape": params["shapes"][n], "dtype": params["dtypes"][n]} for n in sorted(names)]
    in_avals = tuple(_avals(param_entries + meta["inputs"], scope))
    out_avals = tuple(_avals(meta["outputs"], scope))
    in_tree = jax.tree.structure(((dict.fromkeys(names, 0), *([0] * len(meta["inputs"]))), {}))
    out_tree = jax.tree.structure(tuple([0] * len(out_avals)))
    return jax.export.Exported(
        fun_name=cc["fun_name"], in_tree=in_tree, in_avals=in_avals, out_tree=out_tree, out_avals=out_avals,
        _has_named_shardings=False, _in_named_shardings=(None,) * len(in_avals),
        _out_named_shardings=(None,) * len(out_avals), in_shardings_hlo=(None,) * len(in_avals),
        out_shardings_hlo=(None,) * len(out_avals), nr_devices=cc["nr_devices"], platforms=tuple(cc["platforms"]),
        ordered_effects=(), unordered_effects=(), disabled_safety_checks=(), mlir_module_serialized=mlir,
        calling_convention_version=cc["calling_convention_version"],
        module_kept_var_idx=tuple(cc["module_kept_var_idx"]), uses_global_constants=cc["uses_global_constants"],
        _get_vjp=None)
