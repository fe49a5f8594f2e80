"""The benchmark harness.

    python -m benchmarks run --suite quick|full [--out FILE]      run a suite, write JSON lines + Markdown
    python -m benchmarks report FILE [--md OUT] [--plots DIR]     table and plots from a results file
    python -m benchmarks compare A B [--suite quick]              A, B: results files or git revisions
    python -m benchmarks compare --env-a K=V --env-b K=V          two configurations of this tree

Each benchmark script runs in its own process (so peak memory is its own) and prints
JSON lines; the harness stamps each line with the suite, the git revision and the
environment, and keeps them in one file. A comparison matches lines on
(bench, case, metric) and reports B / A.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Iterable

ROOT = pathlib.Path(__file__).resolve().parents[1]

# suite -> list of (module, args); a module that does not exist yet is reported as skipped.
SUITES: dict[str, list[tuple[str, list[str]]]] = {
    "quick": [
        ("benchmarks.sim_step", ["--quick"]),
        ("benchmarks.scaling", ["--quick"]),
        ("benchmarks.train_throughput", ["--quick", "--models", "mlp"]),
        ("benchmarks.apg_remat", ["--quick"]),
        ("benchmarks.data_throughput", ["--quick"]),
        ("benchmarks.generate", ["--quick"]),
        ("benchmarks.waymax_compare", ["--quick"]),
        ("benchmarks.realism", ["--quick"]),
    ],
    "full": [
        ("benchmarks.sim_step", []),
        ("benchmarks.scaling", ["--metrics"]),
        ("benchmarks.train_throughput", []),
        ("benchmarks.apg_remat", []),
        ("benchmarks.data_throughput", []),
        ("benchmarks.generate", []),
        ("benchmarks.waymax_compare", []),
        ("benchmarks.realism", []),
    ],
}

# Higher is better for these units; lower for the rest (seconds, MiB, ratios of cost).
_HIGHER_IS_BETTER = ("1/s",)


def git_revision(cwd: pathlib.Path = ROOT) -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _module_exists(module: str, cwd: pathlib.Path) -> bool:
    return (cwd / (module.replace(".", "/") + ".py")).exists()


def run_suite(suite: str, cwd: pathlib.Path = ROOT, extra_env: dict[str, str] | None = None,
              timeout_s: float = 1800) -> list[dict]:
    """Runs every script of `suite` in `cwd`; returns the parsed records."""
    if suite not in SUITES:
        raise SystemExit(f"unknown suite {suite!r}; expected one of {sorted(SUITES)}")
    env = dict(os.environ, PYTHONPATH=str(cwd) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(extra_env or {}))
    revision = git_revision(cwd)
    records: list[dict] = []
    for module, args in SUITES[suite]:
        if not _module_exists(module, cwd):
            records.append({"bench": module.split(".")[-1], "skipped": f"{module} not present at {revision}"})
            print(json.dumps(records[-1]), flush=True)
            continue
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += f"\n{module}: timed out after {timeout_s} s"
        for line in out.splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            rec.update(suite=suite, revision=revision, **({"config": extra_env} if extra_env else {}))
            records.append(rec)
            print(json.dumps(rec), flush=True)
        if proc.returncode != 0:
            tail = "\n".join(err.strip().splitlines()[-15:])
            rec = {"bench": module.split(".")[-1], "error": f"exit {proc.returncode}", "stderr_tail": tail}
            records.append(rec)
            print(json.dumps(rec), flush=True)
        print(f"# {module}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return records


def read_records(path: str | pathlib.Path) -> list[dict]:
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not a JSON line ({e})")
    return records


def _case_str(case: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in case.items())


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def markdown(records: Iterable[dict]) -> str:
    records = list(records)
    env = next((r["env"] for r in records if "env" in r), {})
    lines = ["# Benchmark results", ""]
    if env:
        lines.append("Machine: " + ", ".join(f"{k}={v}" for k, v in env.items()))
        revs = sorted({r.get("revision", "?") for r in records if "metric" in r})
        lines.append(f"Revision: {', '.join(revs)}")
        lines.append("")
    lines += ["| bench | case | metric | value | unit | compile s |", "|---|---|---|---|---|---|"]
    for r in records:
        if "metric" not in r:
            continue
        lines.append(f"| {r['bench']} | {_case_str(r.get('case', {}))} | {r['metric']} | {_fmt(r['value'])} | "
                     f"{r['unit']} | {_fmt(r['compile_s']) if 'compile_s' in r else ''} |")
    notes = [r for r in records if "skipped" in r or "error" in r]
    if notes:
        lines += ["", "Not measured:", ""]
        for r in notes:
            lines.append(f"- {r['bench']}: {r.get('skipped') or r.get('error')}"
                         + (f" — {r['stderr_tail'].splitlines()[-1]}" if r.get("stderr_tail") else ""))
    return "\n".join(lines) + "\n"


def plots(records: list[dict], out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Throughput vs batch, cost vs horizon, memory vs horizon (with / without remat)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    sc = [r for r in records if r.get("bench") == "scaling" and "metric" in r]

    def series(metric, key, where):
        pts = sorted((r["case"][key], r["value"]) for r in sc if r["metric"] == metric and where(r["case"]))
        return [p[0] for p in pts], [p[1] for p in pts]

    specs = [
        ("throughput_vs_batch.png", "batch B", "env-steps/s",
         [("rollout", series("env_steps_per_s", "B", lambda c: c.get("N") == 32 and c.get("H") == 20 and not c.get("metrics"))),
          ("gradient", series("grad_env_steps_per_s", "B", lambda c: c.get("N") == 32 and not c.get("metrics")))], True),
        ("cost_vs_horizon.png", "horizon H", "gradient step s",
         [("no remat", series("grad_step_s", "H", lambda c: c.get("remat") is False)),
          ("remat", series("grad_step_s", "H", lambda c: c.get("remat") is True))], False),
        ("memory_vs_horizon.png", "horizon H", "compiled temp memory MiB",
         [("no remat", series("temp_memory_mb", "H", lambda c: c.get("remat") is False)),
          ("remat", series("temp_memory_mb", "H", lambda c: c.get("remat") is True))], False),
    ]
    for name, xlabel, ylabel, lines, logx in specs:
        if not any(xs for _, (xs, _) in lines):
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
        for label, (xs, ys) in lines:
            if xs:
                ax.plot(xs, ys, marker="o", label=label)
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _key(r: dict) -> tuple:
    return r.get("bench"), json.dumps(r.get("case", {}), sort_keys=True), r.get("metric")


def compare(a: list[dict], b: list[dict], label_a: str, label_b: str) -> str:
    index_a = {_key(r): r for r in a if "metric" in r}
    lines = [f"# Comparison: B = {label_b} over A = {label_a}", "",
             "| bench | case | metric | A | B | B / A | better |", "|---|---|---|---|---|---|---|"]
    for r in b:
        if "metric" not in r or _key(r) not in index_a:
            continue
        ra = index_a[_key(r)]
        ratio = r["value"] / ra["value"] if ra["value"] else float("nan")
        better = (ratio > 1) == (r["unit"] in _HIGHER_IS_BETTER)
        lines.append(f"| {r['bench']} | {_case_str(r.get('case', {}))} | {r['metric']} | {_fmt(ra['value'])} | "
                     f"{_fmt(r['value'])} | {ratio:.3f} | {'B' if better else 'A'} |")
    return "\n".join(lines) + "\n"


def _records_for(spec: str, suite: str, extra_env: dict | None = None) -> list[dict]:
    """A results file, or a git revision checked out into a temporary worktree and run."""
    if spec and pathlib.Path(spec).is_file():
        return read_records(spec)
    if not spec:
        return run_suite(suite, ROOT, extra_env)
    with tempfile.TemporaryDirectory(prefix="jaxloop-bench-") as tmp:
        wt = pathlib.Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(wt), spec], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            return run_suite(suite, wt, extra_env)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, capture_output=True)


def _parse_env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise SystemExit(f"--env-a/--env-b take KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run a suite")
    p_run.add_argument("--suite", default="quick", choices=sorted(SUITES))
    p_run.add_argument("--out", default=None, help="JSON-lines file (a .md and plots are written beside it)")
    p_rep = sub.add_parser("report", help="Markdown table and plots from a results file")
    p_rep.add_argument("file")
    p_rep.add_argument("--md", default=None)
    p_rep.add_argument("--plots", default=None)
    p_cmp = sub.add_parser("compare", help="two results files, git revisions or configurations side by side")
    p_cmp.add_argument("a", nargs="?", default="")
    p_cmp.add_argument("b", nargs="?", default="")
    p_cmp.add_argument("--suite", default="quick", choices=sorted(SUITES))
    p_cmp.add_argument("--env-a", nargs="*", default=[], help="KEY=VALUE environment of configuration A")
    p_cmp.add_argument("--env-b", nargs="*", default=[], help="KEY=VALUE environment of configuration B")
    p_cmp.add_argument("--out", default=None, help="write the comparison Markdown here")
    args = parser.parse_args(argv)

    if args.cmd == "run":
        t0 = time.perf_counter()
        records = run_suite(args.suite)
        if args.out:
            out = pathlib.Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("".join(json.dumps(r) + "\n" for r in records))
            md = out.with_suffix(".md")
            md.write_text(markdown(records))
            written = plots(records, out.parent / "plots")
            print(f"# wrote {out}, {md}" + "".join(f", {p}" for p in written), file=sys.stderr)
        print(f"# suite {args.suite}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        return 1 if any("error" in r for r in records) else 0
    if args.cmd == "report":
        records = read_records(args.file)
        text = markdown(records)
        if args.md:
            pathlib.Path(args.md).write_text(text)
        else:
            print(text)
        if args.plots:
            for p in plots(records, pathlib.Path(args.plots)):
                print(f"# wrote {p}", file=sys.stderr)
        return 0
    env_a, env_b = _parse_env(args.env_a), _parse_env(args.env_b)
    if not (args.a or args.b or env_a or env_b):
        raise SystemExit("compare needs two results files / revisions, or --env-a/--env-b configurations")
    recs_a = _records_for(args.a, args.suite, env_a)
    recs_b = _records_for(args.b, args.suite, env_b)
    label = lambda spec, env: spec or (" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) or "this tree")
    text = compare(recs_a, recs_b, label(args.a, env_a), label(args.b, env_b))
    if args.out:
        pathlib.Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
