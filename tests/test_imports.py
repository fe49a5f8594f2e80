"""Imports point one way (DESIGN.md: `data -> sim <- policy <- train -> eval`).

Every module of `jaxloop/` is parsed with `ast` (nothing is imported) and each of its
`jaxloop` imports, top-level or inside a function, is checked against the layer table
below. Command-line modules (`*/cli.py`, `jaxloop/cli.py`, `jaxloop/demo.py`), the
pipelines of `jaxloop/experiments/` and the package root (lazy re-exports of the public
API) may import anything; no other module imports them.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "jaxloop"

# The layer graph: each layer and the layers its modules may import (besides itself).
LAYERS: dict[str, tuple[str, ...]] = {
    "base":     (),                                                         # errors, version
    "sim":      ("base",),                                                  # imports nothing else of jaxloop
    "data":     ("sim", "base"),
    "policy":   ("sim", "base"),
    "config":   ("policy", "sim", "base"),                                  # the run configuration
    "io":       ("config", "policy", "sim", "base"),                        # checkpoints, export, policy loading
    "train":    ("io", "config", "policy", "data", "sim", "base"),
    "eval":     ("io", "config", "policy", "sim", "base"),
    "realism":  ("io", "config", "policy", "sim", "base"),                  # WOSAC-style realism of traffic models
    "viz":      ("sim", "base"),
    "interop":  ("data", "sim", "base"),
    "envs":     ("policy", "data", "sim", "base"),                          # gymnax-style environments
}

# Which layer a module belongs to: the longest matching dotted prefix wins.
MODULE_LAYER: dict[str, str] = {
    "jaxloop.errors": "base",
    "jaxloop._version": "base",
    "jaxloop.sim": "sim",
    "jaxloop.data": "data",
    "jaxloop.policy": "policy",
    "jaxloop.config": "config",
    "jaxloop.train.config": "config",
    "jaxloop.io": "io",
    "jaxloop.train": "train",
    "jaxloop.eval": "eval",
    "jaxloop.realism": "realism",
    "jaxloop.viz": "viz",
    "jaxloop.interop": "interop",
    "jaxloop.envs": "envs",
}

# A layer listed here is used by other layers only through these modules (its public entry points).
SURFACE: dict[str, tuple[str, ...]] = {
    "data": ("jaxloop.data",),
}

CLI_MODULES = ("jaxloop", "jaxloop.cli", "jaxloop.demo")
APPLICATIONS = ("jaxloop.experiments",)  # packages of end-to-end pipelines


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_cli(module: str) -> bool:
    return (module in CLI_MODULES or module.endswith(".cli")
            or any(module == app or module.startswith(app + ".") for app in APPLICATIONS))


def layer_of(module: str) -> str | None:
    best = None
    for prefix, layer in MODULE_LAYER.items():
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return best[1] if best else None


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module) of every `jaxloop` import in `source` (`from a import b` gives `a.b` when `b` may
    be a module, else `a`)."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name == "jaxloop" or name.startswith("jaxloop.")]


def _resolve(name: str, known: set[str]) -> str:
    """The module an imported dotted name refers to: itself if it is a module, else its parent (a name in it)."""
    return name if name in known or "." not in name else name.rpartition(".")[0]


def check_source(source: str, module: str, known: set[str], is_package: bool = False) -> list[str]:
    """Every import of `module` (its source) against the layer table, as 'module:line imports target (why)'."""
    if is_cli(module):
        return []
    own = layer_of(module)
    if own is None:
        return [f"{module}: in no layer; add its package to MODULE_LAYER and LAYERS"]
    problems = []
    for line, target in sorted({(line, _resolve(name, known)) for line, name in imported_modules(source, module,
                                                                                             is_package)}):
        where = f"{module}:{line} imports {target}"
        if is_cli(target):
            problems.append(f"{where} (a command-line module, a pipeline or the package root; only they may)")
            continue
        layer = layer_of(target)
        if layer is None:
            problems.append(f"{where} (in no layer)")
        elif layer != own and layer not in LAYERS[own]:
            problems.append(f"{where} ({own} may import {', '.join(LAYERS[own]) or 'nothing'}; not {layer})")
        elif layer != own and layer in SURFACE and target not in SURFACE[layer]:
            problems.append(f"{where} (other layers use {layer} only through {', '.join(SURFACE[layer])})")
    return problems


def _modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def test_imports_follow_the_layer_graph():
    modules = _modules()
    known = set(modules)
    problems = []
    for module, path in modules.items():
        problems += check_source(path.read_text(), module, known, path.name == "__init__.py")
    assert not problems, "imports against the layer graph (DESIGN.md):\n" + "\n".join(problems)


def test_every_layer_in_the_table():
    for layer, allowed in LAYERS.items():
        assert set(allowed) <= set(LAYERS), f"{layer} allows unknown layers {set(allowed) - set(LAYERS)}"
    assert set(MODULE_LAYER.values()) <= set(LAYERS)
    assert "sim" not in [layer for deps in (LAYERS["sim"],) for layer in deps]


KNOWN = {"jaxloop", "jaxloop.cli", "jaxloop.sim", "jaxloop.sim.env", "jaxloop.train", "jaxloop.train.loop",
         "jaxloop.train.config", "jaxloop.eval", "jaxloop.eval.cli", "jaxloop.eval.evaluate", "jaxloop.data",
         "jaxloop.data.procedural", "jaxloop.data.cli", "jaxloop.policy", "jaxloop.policy.networks",
         "jaxloop.experiments", "jaxloop.experiments.open_vs_closed_loop"}


@pytest.mark.parametrize("module, source, expected", [
    ("jaxloop.sim.env", "from jaxloop.train.loop import run\n", ["jaxloop.sim.env:1 imports jaxloop.train.loop"]),
    ("jaxloop.eval.evaluate", "def f():\n    from jaxloop.train import loop\n",
     ["jaxloop.eval.evaluate:2 imports jaxloop.train.loop"]),
    ("jaxloop.eval.evaluate", "import jaxloop.data.procedural as p\n",
     ["jaxloop.eval.evaluate:1 imports jaxloop.data.procedural"]),
    ("jaxloop.train.loop", "from jaxloop.data.procedural import FAMILY_NAMES\n",
     ["jaxloop.train.loop:1 imports jaxloop.data.procedural (other layers use data only"]),
    ("jaxloop.data.sources", "from jaxloop.data.cli import iter_raw\n",
     ["jaxloop.data.sources:1 imports jaxloop.data.cli (a command-line module"]),
    ("jaxloop.data.pipeline", "from jaxloop import __version__\n",
     ["jaxloop.data.pipeline:1 imports jaxloop (a command-line module, a pipeline or the package root"]),
    ("jaxloop.sim.env", "from .. import train\n", ["jaxloop.sim.env:1 imports jaxloop.train ("]),
    ("jaxloop.policy.networks", "from ..sim import env\nimport numpy\n", []),
    ("jaxloop.train.loop", "from jaxloop.data import load_scenarios\nfrom jaxloop.train.config import X\n", []),
    ("jaxloop.eval.cli", "from jaxloop.train.loop import run\n", []),
    ("jaxloop.experiments.open_vs_closed_loop", "from jaxloop.data import procedural\n", []),
    ("jaxloop.eval.gate", "from jaxloop.experiments import open_vs_closed_loop\n",
     ["jaxloop.eval.gate:1 imports jaxloop.experiments.open_vs_closed_loop (a command-line module, a pipeline"]),
    ("jaxloop.newpkg.mod", "import os\n", ["jaxloop.newpkg.mod: in no layer"]),
])
def test_checker_flags_arrows_against_the_design(module, source, expected):
    problems = check_source(source, module, KNOWN)
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected):
        assert problem.startswith(start), (problem, start)
