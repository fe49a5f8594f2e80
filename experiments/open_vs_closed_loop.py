"""Open loop vs closed loop: does closed-loop post-training make a driving policy safer?

    python experiments/open_vs_closed_loop.py [--profile full|demo] [--out experiments/results] [--runs DIR]

The pipeline is `jaxloop.experiments.open_vs_closed_loop` (its docstring says what it
runs and writes); `make demo` runs it with the small `demo` profile. The committed
results in `experiments/results/` come from the default `full` profile.
"""

from jaxloop.experiments.open_vs_closed_loop import main

if __name__ == "__main__":
    main()
