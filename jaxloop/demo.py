"""`make demo` / `jaxloop demo`: the main job on built-in data, end to end, on a CPU.

Generates procedural scenarios, pretrains a policy open loop (behaviour cloning),
post-trains it closed loop (APG), evaluates everything against the no-network
baselines on held-out, out-of-distribution, perturbed and real scenarios, runs the
safety gate, renders GIFs, prints the results table and where every output is. It is
`jaxloop.experiments.open_vs_closed_loop` with its small `demo` profile; the training
runs go to `OUT/bc` and `OUT/apg`.
"""

from __future__ import annotations

import pathlib
from typing import Literal


def run(out: str = "runs/demo", seed: int = 0, profile: Literal["demo", "full"] = "demo") -> int:
    """Runs the open-loop vs closed-loop pipeline (small profile) and prints the results.

    Args:
        out: where results, plots, GIFs and the training runs (checkpoints, logs) go.
        seed: seeds data, training and evaluation.
        profile: "demo" (minutes on a 2-core CPU) or "full" (the committed experiment).
    """
    from jaxloop.experiments.open_vs_closed_loop import main
    result = main(["--profile", profile, "--out", out, "--runs", out, "--seed", str(seed), "--fresh"],
                  prog="jaxloop demo")
    stem = "open_vs_closed_loop" if profile == "full" else f"open_vs_closed_loop_{profile}"
    root = pathlib.Path(out)
    print()
    print((root / f"{stem}.md").read_text())
    print("Outputs:")
    print(f"  results      {root / (stem + '.json')}  and  {root / (stem + '.md')}")
    print("  plots        " + "  ".join(result["plots"]))
    print("  GIFs         " + "  ".join(result["gifs"]))
    trained = ",".join(result["training"])
    print(f"  checkpoints  {result['runs']}/{{{trained}}}/checkpoints")
    print(f"  logs         {result['runs']}/{{{trained}}}/logs (metrics.jsonl, TensorBoard)")
    gate = result["gate"]
    print("  gate         " + ", ".join(f"{k}: {'PASS' if v['passed'] else 'FAIL'}" for k, v in gate.items()))
    return 0


if __name__ == "__main__":
    import tyro
    raise SystemExit(tyro.cli(run, prog="python -m jaxloop.demo"))
