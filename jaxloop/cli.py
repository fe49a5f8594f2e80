"""The `jaxloop` command.

Each subcommand is a typed function in the module that owns it (parsed by tyro), named
here as "module:function" and imported only when called, so `jaxloop --help` is fast
and adding a command touches one line.

A user-facing error (any `jaxloop.errors.JaxloopError`, a `ValueError`, a missing or
unreadable file) is printed as one line, `jaxloop CMD: error: MESSAGE`, with exit code 2
(or the error's `exit_code`, 1 for a diverged run); `jaxloop --debug CMD ...` or
`JAXLOOP_DEBUG=1` re-raises it with its traceback. Other exceptions are bugs and keep theirs.
"""

from __future__ import annotations

import importlib
import os
import sys

from jaxloop.errors import JaxloopError

USER_ERRORS = (JaxloopError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)

# name -> "module:function", or a group: name -> {subname: "module:function"}
COMMANDS: dict[str, str | dict[str, str]] = {
    "demo": "jaxloop.demo:run",
    "render": "jaxloop.viz.cli:render",
    "eval": "jaxloop.eval.cli:run_eval",
    "gate": "jaxloop.eval.cli:run_gate",
    "data": {"convert": "jaxloop.data.cli:convert", "inspect": "jaxloop.data.cli:inspect",
             "generate": "jaxloop.data.procedural.cli:generate_cli"},
    "train": "jaxloop.train.cli:train",
    "export": "jaxloop.train.cli:export",
    "realism": "jaxloop.realism.cli:run_realism",
}

_HELP = {
    "demo": "the main job on built-in data: pretrain (BC), post-train closed loop (APG), evaluate, gate; "
            "runs in runs/demo",
    "render": "roll out one scenario and draw it top-down to PNG / GIF",
    "eval": "closed-loop evaluation of a checkpoint or baseline: metrics, per-family tables, perturbations",
    "gate": "safety gate: candidate vs baseline on held-out and perturbed scenarios (exit 0 pass / 1 fail)",
    "data": "scenario data: convert raw WOMD / AV2 / GPUDrive JSON files into a cache, inspect caches and raw files, "
            "generate built-in procedural scenarios",
    "train": "train a policy: bc | apg | ppo | grpo, with checkpoints, logs and resume",
    "export": "export a trained policy checkpoint with jax.export (runs without jaxloop)",
    "realism": "WOSAC-style realism meta-metric of a traffic model (log, constant velocity, IDM, policy) vs real logs",
}


def _resolve(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _usage(prefix: str, table: dict) -> str:
    lines = [f"usage: {prefix} COMMAND [ARGS...]", "", "commands:"]
    for name, target in table.items():
        if isinstance(target, dict):
            lines.append(f"  {name:<10} {' | '.join(target)}")
        else:
            lines.append(f"  {name:<10} {_HELP.get(name, '')}")
    lines.append("")
    lines.append(f"`{prefix} COMMAND --help` describes each command; `jaxloop --debug COMMAND ...` shows "
                 "tracebacks of errors.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("JAXLOOP_DEBUG", "") not in ("", "0")
    while argv and argv[0] == "--debug":
        debug = True
        argv.pop(0)
    table: dict = COMMANDS
    prog = "jaxloop"
    while True:
        if not argv or argv[0] in ("-h", "--help"):
            print(_usage(prog, table))
            return 0 if argv else 2
        name = argv.pop(0)
        if name == "--version" and table is COMMANDS:
            from jaxloop._version import __version__
            print(__version__)
            return 0
        if name not in table:
            print(f"{prog}: unknown command {name!r}\n\n{_usage(prog, table)}", file=sys.stderr)
            return 2
        prog = f"{prog} {name}"
        target = table[name]
        if isinstance(target, dict):
            table = target
            continue
        try:
            result = tyro.cli(_resolve(target), args=argv, prog=prog)
        except USER_ERRORS as e:
            if debug:
                raise
            message = " ".join(str(e).split()) or type(e).__name__
            print(f"{prog}: error: {message}", file=sys.stderr)
            return int(getattr(e, "exit_code", 2))
        return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
