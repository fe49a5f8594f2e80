"""experiments/selfplay.py: the real-data fine-tuning run's data and start, and the held-out scenes it never sees."""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
selfplay = pytest.importorskip("selfplay")


def test_finetuning_run_mixes_procedural_and_real_training_scenes_only():
    from jaxloop.data.mixture import parse_weight
    from real_logs import REAL_TRAIN, real_files
    cfgs = selfplay.presets("quick", seed=1, preset="closed_loop_safety", bc_coef=0.5,
                            ft_preset="closed_loop_tracking", real_weight=0.25)
    assert set(selfplay.SELFPLAY) == set(cfgs)
    ft, apg_bc = cfgs["selfplay_ft"], cfgs["selfplay_apg_bc"]
    parts = dict(parse_weight(p) for p in ft.data.source.split(","))
    assert parts == {apg_bc.data.source: 0.75, REAL_TRAIN: 0.25}
    assert ft.algo.bc_coef == 0.5 and ft.env.controlled == "vehicles"
    assert ft.env.reward_preset == "closed_loop_tracking" and apg_bc.env.reward_preset == "closed_loop_safety"
    # Both priors by default (the IDM acceleration prior reads the target speed); off on request.
    assert all(c.model.accel_prior == "idm" and c.obs.target_speed and c.model.steer_prior == "pure_pursuit"
               for c in cfgs.values())
    off = selfplay.presets("quick", seed=1, accel_prior="none")["selfplay_ft"]
    assert off.model.accel_prior == "none" and not off.obs.target_speed
    train, held = real_files()
    if held:  # the shared data is there: the held-out scenes are disjoint from the fine-tuning ones
        assert len(held) == 6 and len(train) == 12 and not set(train) & set(held)


def test_targets_cover_the_finetuned_policy_on_held_out_real_scenes():
    row = {"collision_offroad_rate": 0.01, "route_completion": 0.9}
    rows = selfplay.targets({"selfplay": {"selfplay_ft": {"real_holdout": row}}})
    assert [ok for _, _, ok in rows] == ["met", "missed"]
    assert all("selfplay_ft self-play on real_holdout" in t for t, _, _ in rows)
