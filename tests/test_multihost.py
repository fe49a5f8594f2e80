"""Multi-host training on JAX's own distributed runtime: 2 processes x 1 CPU device (gloo collectives) train the
same parameters as 1 process with the same global batch, through a checkpoint saved on both and resumed."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from _train_utils import scenarios, tiny_config
from jaxloop.data.dataset import BatchPlan, InMemoryDataset
from jaxloop.train import loop, parallel
from jaxloop.io.policies import load_params

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN = dict(log_every=2, ckpt_every=2, progress=False, use_tensorboard=False, data_partitions=2)
COUNT, STEPS, FIRST = 8, 4, 2  # scenarios, total steps, steps before the resume

WORKER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, "tests")
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from jaxloop.train import parallel
    port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    assert parallel.initialize_distributed(f"localhost:{port}", 2, pid)
    assert (jax.process_count(), jax.process_index(), jax.device_count(), jax.local_device_count()) == (2, pid, 2, 1)
    from _train_utils import scenarios, tiny_config
    from jaxloop.train import loop
    RUN = dict(log_every=2, ckpt_every=2, progress=False, use_tensorboard=False, data_partitions=2)
    data = scenarios(count=%d)
    first = loop.run(tiny_config("bc"), data, out, %d, **RUN)     # checkpoints on both processes
    second = loop.run(tiny_config("bc"), data, out, %d, **RUN)    # restores them and continues
    print("RESULT " + json.dumps([first["final_step"], second["start_step"], second["final_step"]]))
    jax.distributed.shutdown()
""") % (COUNT, FIRST, STEPS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _params(out):
    return [np.asarray(x) for x in jax.tree.leaves(load_params(os.path.join(out, "checkpoints"))[1])]


def test_two_processes_train_what_one_process_trains_with_the_same_global_batch(tmp_path):
    out2 = str(tmp_path / "two")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(pid), out2], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in range(2)]
    outputs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            outputs.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for pid, (code, stdout, stderr) in enumerate(outputs):
        assert code == 0, f"process {pid} exited {code}:\n{stdout[-2000:]}\n{stderr[-4000:]}"
        result = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
        assert result and json.loads(result[0][7:]) == [FIRST, FIRST, STEPS], stdout  # resumed at step 2 on both

    # The same global batches in one process: 2 data partitions, the batch sequence independent of the processes.
    out1 = str(tmp_path / "one")
    summary = loop.run(tiny_config("bc"), scenarios(count=COUNT), out1, STEPS, **RUN)
    assert summary["final_step"] == STEPS
    for a, b in zip(_params(out1), _params(out2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Every leaf of the multi-host steps is in their checksum record (and so verified on restore).
    record = json.loads((pathlib.Path(out2) / "checkpoints" / "checksums" / f"{STEPS}.json").read_text())
    single = json.loads((pathlib.Path(out1) / "checkpoints" / "checksums" / f"{STEPS}.json").read_text())
    assert set(record) == set(single) and any(k.startswith("params/") for k in record)
    # Logs and summary come from process 0 alone: one record per log step.
    steps = [json.loads(line)["step"] for line in open(os.path.join(out2, "logs", "metrics.jsonl"))]
    assert steps == [2, 4]


def test_batch_order_does_not_depend_on_the_process_count():
    plan = InMemoryDataset(scenarios(count=COUNT, num_steps=20)).plan(8, seed=3, partitions=4)
    for step in range(5):
        whole = plan.indices(step)
        for count in (1, 2, 4):
            rows = np.concatenate([plan.process_indices(step, p, count) for p in range(count)])
            np.testing.assert_array_equal(rows, whole)
    # each process reads only its own blocks of the data
    for step in range(5):
        assert set(plan.process_indices(step, 0, 2)) <= set(range(4))
        assert set(plan.process_indices(step, 1, 2)) <= set(range(4, 8))
    with pytest.raises(ValueError, match="4 data partitions do not divide among 3 processes"):
        plan.process_indices(0, 0, 3)


def test_initialize_distributed_flags_and_cluster_detection(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                 "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert parallel.cluster_process_count() == 1
    assert not parallel.initialize_distributed() and calls == []  # a single plain process starts nothing
    assert not parallel.initialize_distributed("h:1", 1, 0) and calls == []
    with pytest.raises(ValueError, match="give all of --coordinator-address, --num-processes and --process-id"):
        parallel.initialize_distributed("h:1")
    with pytest.raises(ValueError, match=r"--process-id 2 must be in \[0, --num-processes 2\)"):
        parallel.initialize_distributed("h:1", 2, 2)
    assert parallel.initialize_distributed("h:1234", 2, 1)
    assert calls[-1] == dict(coordinator_address="h:1234", num_processes=2, process_id=1)
    # Slurm: srun's environment is read by jax.distributed itself (no flags passed on).
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[001-002]")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("SLURM_STEP_NUM_NODES", "2")
    assert parallel.cluster_process_count() == 2
    assert parallel.initialize_distributed()
    assert calls[-1] == dict(coordinator_address=None, num_processes=None, process_id=None)
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task job is a plain process
    assert not parallel.initialize_distributed() and len(calls) == 2


def test_plan_rejects_what_it_cannot_split():
    sources = ((0, 8, 8),)
    with pytest.raises(ValueError, match="batch size 6 must divide by the 4 data partitions"):
        BatchPlan(sources, None, 6, 0, partitions=4)
    with pytest.raises(ValueError, match="8 scenarios, fewer than the 16 data partitions"):
        BatchPlan(sources, None, 16, 0, partitions=16)
