"""`make demo` / `jaxloop demo`: the main job on built-in data, end to end, on a CPU.

Generates procedural scenarios, pretrains a policy open loop (behaviour cloning),
post-trains it closed loop (APG and GRPO), evaluates everything against the
no-network baselines on held-out, out-of-distribution, perturbed and real scenarios,
runs the safety gate, renders GIFs, prints the results table and where every output
is. It is `experiments/open_vs_closed_loop.py` with its small `demo` profile.
"""

from __future__ import annotations

import importlib.util
import pathlib

EXPERIMENT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "open_vs_closed_loop.py"


def run(out: str = "runs/demo", seed: int = 0, profile: str = "demo") -> int:
    """Runs the open-loop vs closed-loop pipeline (small profile) and prints the results.

    Args:
        out: where results, plots, GIFs, checkpoints and logs go.
        seed: seeds data, training and evaluation.
        profile: "demo" (minutes on a 2-core CPU) or "full" (the committed experiment).
    """
    if not EXPERIMENT.is_file():
        raise SystemExit(f"the demo runs {EXPERIMENT}, which is not there: run it from a jaxloop checkout")
    spec = importlib.util.spec_from_file_location("open_vs_closed_loop", EXPERIMENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--profile", profile, "--out", out, "--seed", str(seed), "--fresh"])
    stem = "open_vs_closed_loop" if profile == "full" else f"open_vs_closed_loop_{profile}"
    print()
    print((pathlib.Path(out) / f"{stem}.md").read_text())
    root = pathlib.Path(out)
    print("Outputs:")
    print(f"  results      {root / (stem + '.json')}  and  {root / (stem + '.md')}")
    print(f"  plots        " + "  ".join(result["plots"]))
    print(f"  GIFs         " + "  ".join(result["gifs"]))
    trained = ",".join(result["training"])
    print(f"  checkpoints  {root / 'runs' / profile}/{{{trained}}}/checkpoints")
    print(f"  logs         {root / 'runs' / profile}/{{{trained}}}/logs (metrics.jsonl, TensorBoard)")
    gate = result["gate"]
    print("  gate         " + ", ".join(f"{k}: {'PASS' if v['passed'] else 'FAIL'}" for k, v in gate.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
