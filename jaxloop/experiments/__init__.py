"""Research pipelines that ship with the package (so `jaxloop demo` runs from any install).

- `open_vs_closed_loop`: behaviour cloning, then closed-loop post-training (APG, GRPO),
  evaluated on held-out, out-of-distribution, perturbed and real scenarios, gated.
"""
