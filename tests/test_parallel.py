"""Data parallelism: a step on 4 (simulated CPU) devices equals the step on 1 device."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, "tests")
    import jax, numpy as np
    from _train_utils import scenarios, tiny_config
    from jaxloop.train.parallel import make_mesh
    from jaxloop.train.trainer import make_trainer

    assert jax.device_count() == 4, jax.devices()
    config = tiny_config("bc")
    data = scenarios()
    results = {}
    for n in (1, 4):
        trainer = make_trainer(config, mesh=make_mesh(n))
        state = trainer.init(jax.random.PRNGKey(0))
        batch = trainer.shard(data)
        assert len(batch.log_trajectory.x.sharding.device_set) == n
        for i in range(2):
            state, metrics = trainer.train_step(state, batch, jax.random.PRNGKey(i), trainer.params)
        leaf = jax.tree.leaves(state.params)[0]
        assert len(leaf.sharding.device_set) == n and leaf.sharding.is_fully_replicated
        results[n] = [np.asarray(x) for x in jax.tree.leaves(state.params)], float(metrics["loss"])
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(results[1][0], results[4][0]))
    scale = max(float(np.max(np.abs(a))) for a in results[1][0])
    print(json.dumps({"max_abs_diff": diff, "scale": scale, "loss1": results[1][1], "loss4": results[4][1]}))
""")


def test_four_devices_match_one_device():
    # Backend optimisation level 0 only shortens the two compiles; sharding is what is compared.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["scale"] > 0.01
    # Same parameters after two steps, to float32 reduction-order tolerance.
    assert result["max_abs_diff"] <= 1e-5 * max(1.0, result["scale"]), result
    assert abs(result["loss1"] - result["loss4"]) <= 1e-5 * max(1.0, abs(result["loss1"])), result
