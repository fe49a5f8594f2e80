import sys
import types

import jax
import numpy as np
import pytest

from jaxloop.data.toy import make_toy_scenario
from jaxloop.interop import waymax as bridge


def _real_waymax() -> bool:
    try:
        bridge.waymax_datatypes()
        return True
    except ImportError:
        return False


def test_missing_or_placeholder_waymax_is_a_clear_import_error(monkeypatch):
    placeholder = types.ModuleType("waymax")
    placeholder.datatypes = types.ModuleType("waymax.datatypes")  # no SimulatorState: not the real one
    monkeypatch.setitem(sys.modules, "waymax", placeholder)
    monkeypatch.setitem(sys.modules, "waymax.datatypes", placeholder.datatypes)
    with pytest.raises(ImportError, match="no waymax.datatypes.SimulatorState") as e:
        bridge.waymax_datatypes()
    assert "waymo-waymax" in str(e.value) and "unrelated placeholder" in str(e.value)
    monkeypatch.setitem(sys.modules, "waymax", None)  # not installed at all
    with pytest.raises(ImportError, match="PyPI package named `waymax` is an unrelated placeholder"):
        bridge.to_waymax(make_toy_scenario())


def test_roadmap_points_cover_lanes_and_edges():
    scenario = make_toy_scenario(lane_points=5)
    pts = bridge.roadmap_points(scenario)
    rm = scenario.roadmap
    assert int(pts.valid.sum()) == int(rm.lane_valid.sum()) + int(rm.edge_valid.sum())
    # Lane 0 point 0 -> point 1 vector; edge 0's start and direction (end - start).
    np.testing.assert_allclose([pts.dir_x[0], pts.dir_y[0]], rm.lane_xy[0, 1] - rm.lane_xy[0, 0])
    i = rm.lane_xy.shape[0] * rm.lane_xy.shape[1]
    np.testing.assert_allclose([pts.x[i], pts.y[i]], rm.edge_start[0])
    np.testing.assert_allclose([pts.dir_x[i], pts.dir_y[i]], rm.edge_end[0] - rm.edge_start[0])


@pytest.mark.skipif(not _real_waymax(), reason="the real Waymax (waymo-waymax from GitHub) is not installed")
def test_round_trip_through_waymax(shared_data):
    from jaxloop.data.womd import load_womd
    scenario, _ = next(load_womd(shared_data / "womd" / "motion_data_one_example.tfrecord"))
    state = bridge.to_waymax(scenario)
    assert int(state.timestep) == 10
    back, _ = bridge.from_waymax(state)
    for f in ("x", "y", "yaw", "valid"):
        np.testing.assert_array_equal(getattr(back.log_trajectory, f), getattr(scenario.log_trajectory, f))
    np.testing.assert_array_equal(back.object_metadata.is_sdc, scenario.object_metadata.is_sdc)
    jax.tree.map(np.asarray, back)
