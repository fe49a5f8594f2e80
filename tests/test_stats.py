"""Scenario statistics of the distribution-gap table, on a hand-built log."""

from __future__ import annotations

import jax
import numpy as np

from jaxloop.data.stats import gap_table, scenario_statistics, summarize
from jaxloop.data.toy import LANE_WIDTH, make_toy_scenario


def _two_cars():
    """Toy road; the ego at 10 m/s along +x from x=0, car 1 at 8 m/s 20 m ahead in its lane, the rest invalid."""
    sc = jax.tree.map(np.array, make_toy_scenario(num_objects=4, num_steps=31, num_cars=4, seed=0))
    traj = sc.log_trajectory
    t = np.arange(31) * 0.1
    for i, (x0, v) in enumerate([(0.0, 10.0), (20.0, 8.0)]):
        traj.x[i], traj.y[i], traj.yaw[i] = x0 + v * t, 0.0, 0.0
        traj.vel_x[i], traj.vel_y[i] = v, 0.0
    traj.valid[2:] = False
    return sc.replace(log_trajectory=traj, object_metadata=sc.object_metadata.replace(
        is_valid=traj.valid.any(-1)))


def test_statistics_of_a_hand_built_log():
    sc = _two_cars()
    stats = scenario_statistics(jax.tree.map(lambda a: a[None], sc), current_index=10)
    assert stats["ego_speed"][0] == 10.0 and stats["other_speed"][0] == 8.0
    assert stats["ego_accel"][0] == 0.0 and stats["ego_curvature"][0] == 0.0  # constant speed, straight
    # the gap closes from 20 m by (10 - 8) * 0.1 = 0.2 m a step over 31 steps: 20 .. 14, median 17
    np.testing.assert_allclose(stats["headway_m"][0], 17.0, atol=1e-4)
    # at step 10 the car is 20 + 8 - 10 = 18 m ahead: one object within 30 m
    assert stats["objects_30m"][0] == 1.0
    # toy lanes are LANE_WIDTH apart
    np.testing.assert_allclose(stats["lane_width_m"][0], LANE_WIDTH, atol=1e-3)
    assert stats["lane_km_per_km2"][0] > 0 and stats["edge_km_per_km2"][0] > 0


def test_gap_table_ratio():
    a = {"ego_speed": {"median": 9.0, "p10": 1.0, "p90": 12.0, "n": 3}}
    b = {"ego_speed": {"median": 3.0, "p10": 1.0, "p90": 6.0, "n": 2}}
    assert "| ego_speed | 9 [1, 12] | 3 [1, 6] | 3.00 |" in gap_table(a, b, "p", "r")
    s = summarize({"x": np.array([1.0, np.nan, 3.0])})["x"]
    assert (s["median"], s["n"]) == (2.0, 2)
