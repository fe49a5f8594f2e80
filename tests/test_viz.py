"""Top-down rendering: image sizes, per-step changes, geometry placement, GIF frames, CLI."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image

from jaxloop.sim.datatypes import TL_GO, TL_STOP, trajectory_at
from jaxloop.viz import Renderer, box_corners, render_episode_gif, render_frame, save_png
from jaxloop.viz.render import COLORS, LIGHT_COLORS


def _hex(c: str) -> np.ndarray:
    return np.array([int(c[i:i + 2], 16) for i in (1, 3, 5)])


def _log_states(scenario, steps):
    """Logged states `[H, N]` at `steps`, as a rollout would return them."""
    return jax.tree.map(np.asarray, jax.vmap(lambda t: trajectory_at(scenario.log_trajectory, t))(np.asarray(steps)))


def _at(states, h):
    return jax.tree.map(lambda a: a[h], states)


def _with_light(scenario):
    """The toy scenario plus one light at (x=40, y=0): red until step 30, green after."""
    sc = jax.tree.map(np.asarray, scenario)
    num_steps = sc.traffic_lights.state.shape[1]
    state = np.where(np.arange(num_steps) < 30, TL_STOP, TL_GO).astype(np.int32)[None]
    tl = sc.traffic_lights.replace(state=state, x=np.full((1, num_steps), 40.0, np.float32),
                                   y=np.zeros((1, num_steps), np.float32), valid=np.ones((1, num_steps), bool))
    return sc.replace(traffic_lights=tl)


def test_box_corners_follow_heading():
    # a 4 x 2 box at (1, 2) facing +y (yaw = pi/2): front-left corner = centre + 2*(0, 1) + 1*(-1, 0) = (0, 4)
    c = box_corners(1.0, 2.0, np.pi / 2, 4.0, 2.0)
    np.testing.assert_allclose(c, [[0, 4], [0, 0], [2, 0], [2, 4]], atol=1e-12)


def test_render_frame_size_and_steps_differ(toy_scenario):
    states = _log_states(toy_scenario, [11, 40])
    a = render_frame(toy_scenario, _at(states, 0), 11, width_px=96, height_px=64, view_m=40.0)
    b = render_frame(toy_scenario, _at(states, 1), 40, width_px=96, height_px=64, view_m=40.0)
    assert a.shape == (64, 96, 3) and a.dtype == np.uint8
    assert (a != b).any()
    # not a blank canvas: the background, the road and the ego's colour all appear
    for color in (COLORS["background"], COLORS["road"], COLORS["ego"]):
        assert (np.abs(a.astype(int) - _hex(color)).sum(-1) < 30).any(), color


def test_render_places_road_and_ego_in_world_frame(toy_scenario):
    """Pixels map to metres: 100 px over 25 m is 4 px/m, centred on the ego."""
    state = jax.tree.map(np.asarray, trajectory_at(toy_scenario.log_trajectory, 20))
    renderer = Renderer(toy_scenario, width_px=100, height_px=100, view_m=25.0)
    img = renderer.frame(state, 20, show_ghost=False).astype(int)
    ego_x, ego_y = float(state.x[0]), float(state.y[0])

    def pixel(x, y):  # world -> (row, col); rows grow downwards
        return img[int(round(50 - (y - ego_y) * 4)), int(round(50 + (x - ego_x) * 4))]

    def near(p, color):
        return np.abs(p - _hex(color)).sum() < 30

    # inside the ego box (4.5 x 2 m, yaw ~ 0), behind its centre (the heading tick points forward)
    assert near(pixel(ego_x - 1.0, ego_y + 0.3), COLORS["ego"])
    assert near(pixel(ego_x - 1.0, ego_y - 0.3), COLORS["ego"])
    # the road surface lies between the edges (y in [-1.75, 5.25]) and background outside
    assert near(pixel(ego_x - 8.0, 2.6), COLORS["road"])
    assert near(pixel(ego_x - 8.0, -1.2), COLORS["road"])  # just inside the lower edge
    assert near(pixel(ego_x - 8.0, -4.5), COLORS["background"])
    assert near(pixel(ego_x - 8.0, 8.0), COLORS["background"])
    renderer.close()


def test_traffic_light_colour_follows_step(toy_scenario):
    sc = _with_light(toy_scenario)
    state = _at(_log_states(sc, [25]), 0)
    renderer = Renderer(sc, width_px=120, height_px=120, view_m=60.0)
    centre = state.replace(x=state.x.copy())
    centre.x[0] = 40.0  # view centred on the light (ego moved onto x=40, drawn off the light's row)
    centre = centre.replace(y=centre.y.copy())
    centre.y[0] = 12.0
    # the light is at (40, 0): 12 m below the view centre at 2 px/m -> row 60 + 24 = 84, column 60
    red = renderer.frame(centre, 25, show_ghost=False)[84, 60].astype(int)
    green = renderer.frame(centre, 35, show_ghost=False)[84, 60].astype(int)
    assert np.abs(red - _hex(LIGHT_COLORS["red"])).sum() < 40
    assert np.abs(green - _hex(LIGHT_COLORS["green"])).sum() < 40
    renderer.close()


def test_render_errors(toy_scenario):
    state = trajectory_at(toy_scenario.log_trajectory, 11)
    batched = jax.tree.map(lambda a: np.stack([a, a]), toy_scenario)
    with pytest.raises(ValueError, match="unbatched"):
        render_frame(batched, state, 11)
    with pytest.raises(ValueError, match="uint8"):
        save_png(np.zeros((4, 4, 3), np.float32), "/nonexistent/x.png")


def test_png_and_gif_frames(toy_scenario, tmp_path):
    states = _log_states(toy_scenario, np.arange(11, 21))  # H = 10
    img = render_frame(toy_scenario, _at(states, 3), 14, ego_trail_xy=np.stack([states.x[:4, 0], states.y[:4, 0]], -1),
                       width_px=80, height_px=60)
    path = save_png(img, tmp_path / "f.png")
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.size == (80, 60)
    gif = render_episode_gif(toy_scenario, states, tmp_path / "e.gif", fps=5, stride=3, timesteps=np.arange(11, 21),
                             width_px=64, height_px=48)
    with Image.open(gif) as im:
        assert im.n_frames == 4  # steps 0, 3, 6, 9 of 10
        assert im.size == (64, 48)


def test_render_cli_toy(tmp_path):
    from jaxloop.cli import main
    png, gif = tmp_path / "out.png", tmp_path / "out.gif"
    assert main(["render", "--data", "toy", "--index", "1", "--out", str(png), "--gif", str(gif), "--stride", "20",
                 "--width-px", "64", "--height-px", "48", "--policy", "constant_velocity"]) == 0
    with Image.open(png) as im:
        assert im.size == (64, 48)
    with Image.open(gif) as im:
        assert im.n_frames == 4  # 80 closed-loop steps, every 20th


def test_render_cli_missing_data_names_the_path(tmp_path):
    from jaxloop.viz.cli import render
    with pytest.raises(FileNotFoundError, match="nope"):
        render(data=str(tmp_path / "nope"), out=str(tmp_path / "x.png"))
