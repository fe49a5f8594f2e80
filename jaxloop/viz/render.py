"""Top-down rendering of a scenario / closed-loop episode to images (matplotlib Agg) and GIFs.

What a frame shows, in a view centred on the ego:
- drivable area: lane strips (a lane width wide) and, along each road edge, a band on
  its drivable side (the right of the edge's direction, the WOMD convention); road
  edges as dark lines; lane centres as thin dashed lines;
- crosswalks (hatched), stop signs (red octagons), traffic lights as dots at their stop
  points in their state colour at that step (red / yellow / green, grey unknown);
- object boxes coloured by type (vehicle / pedestrian / cyclist / other) with a
  heading tick; the ego in red with a thick edge, its simulated trail, and the logged
  ego at the same step as a dashed ghost outline.

`Renderer` builds the figure and the static map once per scenario and only updates the
moving artists per frame; `render_frame` is the one-shot form.

Input is one unbatched `Scenario` (numpy or jax arrays); everything is converted with
`np.asarray` on the host.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
# The Agg canvas is used directly (no pyplot), so importing this module never changes the backend.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Polygon

from jaxloop.sim.datatypes import (TYPE_CYCLIST, TYPE_PEDESTRIAN, TYPE_VEHICLE, TL_ARROW_CAUTION,
                                   TL_ARROW_GO, TL_ARROW_STOP, TL_CAUTION, TL_FLASHING_CAUTION, TL_FLASHING_STOP,
                                   TL_GO, TL_STOP, ObjectState, Scenario)

DPI = 100
LANE_WIDTH_M = 3.5
EDGE_BAND_M = 1.5

COLORS = {
    "background": "#e9e7df",
    "road": "#c4c4c4",
    "edge": "#303030",
    "lane_centre": "#fafafa",
    "route": "#8e44ad",
    "crosswalk": "#ffffff",
    "stop_sign": "#c0392b",
    "ego": "#d62728",
    "ghost": "#7f0000",
    "trail": "#d62728",
    "heading": "#111111",
}
TYPE_COLORS = {TYPE_VEHICLE: "#1f77b4", TYPE_PEDESTRIAN: "#ff7f0e", TYPE_CYCLIST: "#2ca02c"}
OTHER_COLOR = "#9467bd"
LIGHT_COLORS = {"red": "#e41a1c", "yellow": "#ffcc00", "green": "#33cc33", "unknown": "#8c8c8c"}


def light_color(state: int) -> str:
    """Colour of a traffic-light state (TL_*)."""
    if state in (TL_STOP, TL_ARROW_STOP, TL_FLASHING_STOP):
        return LIGHT_COLORS["red"]
    if state in (TL_CAUTION, TL_ARROW_CAUTION, TL_FLASHING_CAUTION):
        return LIGHT_COLORS["yellow"]
    if state in (TL_GO, TL_ARROW_GO):
        return LIGHT_COLORS["green"]
    return LIGHT_COLORS["unknown"]


def type_color(object_type: int) -> str:
    return TYPE_COLORS.get(int(object_type), OTHER_COLOR)


def box_corners(x, y, yaw, length, width) -> np.ndarray:
    """Corners `[..., 4, 2]` of oriented boxes (front-left, rear-left, rear-right, front-right)."""
    x, y, yaw, length, width = (np.asarray(a, np.float64) for a in (x, y, yaw, length, width))
    c, s = np.cos(yaw), np.sin(yaw)
    local = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])  # [4, 2] in (length, width) units
    lx = local[:, 0] * length[..., None]  # [..., 4]
    ly = local[:, 1] * width[..., None]
    cx = x[..., None] + c[..., None] * lx - s[..., None] * ly
    cy = y[..., None] + s[..., None] * lx + c[..., None] * ly
    return np.stack([cx, cy], -1)


def _host(tree: Any) -> Any:
    import jax
    return jax.tree.map(np.asarray, tree)


def _check_unbatched(scenario: Scenario) -> None:
    if scenario.batch_shape != ():
        raise ValueError(f"render: expected one unbatched Scenario, got batch shape {list(scenario.batch_shape)}; "
                         "index the batch first (jaxloop.sim.datatypes.index_batch)")


def _edge_bands(start: np.ndarray, end: np.ndarray, width: float) -> np.ndarray:
    """Quads `[E, 4, 2]` on the drivable (right) side of directed edge segments."""
    d = end - start
    norm = np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-6)
    d = d / norm
    right = np.stack([d[:, 1], -d[:, 0]], -1)  # direction rotated by -90 degrees
    return np.stack([start, end, end + right * width, start + right * width], 1)


class Renderer:
    """Reusable top-down renderer for one scenario: static map drawn once, moving artists updated per frame."""

    def __init__(self, scenario: Scenario, width_px: int = 640, height_px: int = 640, view_m: float = 80.0):
        if width_px < 16 or height_px < 16:
            raise ValueError(f"Renderer: image must be at least 16x16 pixels, got {width_px}x{height_px}")
        if not view_m > 0:
            raise ValueError(f"Renderer: view_m must be positive, got {view_m}")
        scenario = _host(scenario)
        _check_unbatched(scenario)
        self.scenario = scenario
        self.width_px, self.height_px, self.view_m = int(width_px), int(height_px), float(view_m)
        self.view_h_m = self.view_m * self.height_px / self.width_px
        self.ego_index = int(np.argmax(scenario.object_metadata.is_sdc))
        self.object_types = scenario.object_metadata.object_types

        self.fig = Figure(figsize=(self.width_px / DPI, self.height_px / DPI), dpi=DPI)
        self.canvas = FigureCanvasAgg(self.fig)
        self.fig.patch.set_facecolor(COLORS["background"])
        ax = self.ax = self.fig.add_axes((0.0, 0.0, 1.0, 1.0))
        ax.set_axis_off()
        ax.set_facecolor(COLORS["background"])
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlim(-self.view_m / 2, self.view_m / 2)
        ax.set_ylim(-self.view_h_m / 2, self.view_h_m / 2)
        self._draw_map()
        self._init_dynamic()

    # -- static map ----------------------------------------------------------------------
    def _metres_to_points(self, metres: float) -> float:
        return metres * (self.width_px / self.view_m) * 72.0 / DPI

    def _draw_map(self) -> None:
        ax, rm = self.ax, self.scenario.roadmap
        lanes = [xy[v] for xy, v in zip(rm.lane_xy, rm.lane_valid) if v.sum() >= 2]
        if lanes:
            ax.add_collection(LineCollection(lanes, colors=COLORS["road"], linewidths=self._metres_to_points(
                LANE_WIDTH_M), capstyle="butt", joinstyle="round", zorder=1))
        edge_valid = rm.edge_valid.astype(bool)
        if edge_valid.any():
            start, end = rm.edge_start[edge_valid], rm.edge_end[edge_valid]
            ax.add_collection(PolyCollection(_edge_bands(start, end, EDGE_BAND_M), facecolors=COLORS["road"],
                                             edgecolors="none", zorder=1))
            ax.add_collection(LineCollection(np.stack([start, end], 1), colors=COLORS["edge"], linewidths=1.5,
                                             zorder=3))
        cw = rm.crosswalk_valid.astype(bool)
        if cw.any():
            ax.add_collection(PolyCollection(rm.crosswalk_xy[cw], facecolors=COLORS["crosswalk"],
                                             edgecolors="#888888", hatch="///", linewidths=0.8, alpha=0.9, zorder=2))
        if lanes:
            ax.add_collection(LineCollection(lanes, colors=COLORS["lane_centre"], linewidths=0.8,
                                             linestyles=(0, (4, 4)), zorder=2))
        route = self.scenario.route
        rv = route.valid.astype(bool)
        if rv.sum() >= 2:
            ax.plot(route.xy[rv, 0], route.xy[rv, 1], color=COLORS["route"], lw=1.0, ls=":", alpha=0.7, zorder=2)
        ss = rm.stop_sign_valid.astype(bool)
        if ss.any():
            ax.scatter(rm.stop_sign_xy[ss, 0], rm.stop_sign_xy[ss, 1], marker="8", s=60, c=COLORS["stop_sign"],
                       edgecolors="white", linewidths=0.8, zorder=4)

    # -- moving artists ------------------------------------------------------------------
    def _init_dynamic(self) -> None:
        ax = self.ax
        self._lights = ax.scatter([], [], s=50, edgecolors="black", linewidths=0.6, zorder=5)
        self._boxes = PolyCollection([], linewidths=0.8, zorder=6)
        ax.add_collection(self._boxes)
        self._headings = LineCollection([], colors=COLORS["heading"], linewidths=1.0, zorder=7)
        ax.add_collection(self._headings)
        (self._trail,) = ax.plot([], [], color=COLORS["trail"], lw=2.0, alpha=0.8, zorder=5)
        self._ghost = Polygon(np.zeros((4, 2)), closed=True, fill=False, edgecolor=COLORS["ghost"], linestyle="--",
                              linewidth=1.5, zorder=8, visible=False)
        ax.add_patch(self._ghost)
        self._label = ax.text(0.01, 0.99, "", transform=ax.transAxes, ha="left", va="top", fontsize=9,
                              family="monospace", zorder=10,
                              bbox=dict(facecolor="white", alpha=0.7, edgecolor="none", pad=2))

    def frame(self, states: ObjectState, t: int, ego_trail_xy: np.ndarray | None = None,
              show_ghost: bool = True, label: str | None = None) -> np.ndarray:
        """The image `[H, W, 3]` uint8 of object `states` `[N]` at log step `t`."""
        states = _host(states)
        if np.ndim(states.x) != 1:
            raise ValueError(f"Renderer.frame: states must be one step `[N]`, got shape {list(np.shape(states.x))}")
        num_objects = self.scenario.log_trajectory.x.shape[-2]
        if states.x.shape[0] != num_objects:
            raise ValueError(f"Renderer.frame: states have {states.x.shape[0]} objects, the scenario {num_objects}")
        t = int(t)
        log = self.scenario.log_trajectory
        num_steps = log.x.shape[-1]
        ego = self.ego_index
        valid = states.valid.astype(bool)

        # view centred on the ego (falls back to its logged position when the state is invalid)
        if valid[ego]:
            cx, cy = float(states.x[ego]), float(states.y[ego])
        else:
            tc = int(np.clip(t, 0, num_steps - 1))
            cx, cy = float(log.x[ego, tc]), float(log.y[ego, tc])
        self.ax.set_xlim(cx - self.view_m / 2, cx + self.view_m / 2)
        self.ax.set_ylim(cy - self.view_h_m / 2, cy + self.view_h_m / 2)

        # objects, the ego drawn last so it stays on top
        idx = np.flatnonzero(valid)
        idx = np.concatenate([idx[idx != ego], idx[idx == ego]])
        corners = box_corners(states.x[idx], states.y[idx], states.yaw[idx], states.length[idx], states.width[idx])
        faces = [COLORS["ego"] if i == ego else type_color(self.object_types[i]) for i in idx]
        self._boxes.set_verts(list(corners))
        self._boxes.set_facecolors(faces)
        self._boxes.set_edgecolors(["black" if i == ego else "#202020" for i in idx])
        self._boxes.set_linewidths([2.0 if i == ego else 0.6 for i in idx])
        front = 0.5 * (corners[:, 0] + corners[:, 3])  # mid-point of the front edge
        centre = np.stack([states.x[idx], states.y[idx]], -1)
        self._headings.set_segments(list(np.stack([centre, front], 1)))

        # traffic lights at this step
        tl = self.scenario.traffic_lights
        if 0 <= t < tl.state.shape[-1]:
            on = tl.valid[:, t].astype(bool)
            self._lights.set_offsets(np.stack([tl.x[on, t], tl.y[on, t]], -1))
            self._lights.set_facecolors([light_color(int(s)) for s in tl.state[on, t]])
        else:
            self._lights.set_offsets(np.zeros((0, 2)))

        # ego trail and the logged ego as a ghost
        if ego_trail_xy is not None and len(ego_trail_xy) > 0:
            trail = np.asarray(ego_trail_xy, np.float64).reshape(-1, 2)
            self._trail.set_data(trail[:, 0], trail[:, 1])
        else:
            self._trail.set_data([], [])
        ghost_on = show_ghost and 0 <= t < num_steps and bool(log.valid[ego, t])
        if ghost_on:
            self._ghost.set_xy(box_corners(log.x[ego, t], log.y[ego, t], log.yaw[ego, t], log.length[ego, t],
                                           log.width[ego, t]))
        self._ghost.set_visible(ghost_on)
        speed = float(np.hypot(states.vel_x[ego], states.vel_y[ego]))
        self._label.set_text(label if label is not None else f"t={t:3d}  {t * 0.1:5.1f}s  ego {speed:4.1f} m/s")

        self.canvas.draw()
        image = np.asarray(self.canvas.buffer_rgba())[..., :3]
        return _fit(image, self.height_px, self.width_px)

    def close(self) -> None:
        self.fig.clear()


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Crops / pads (edge) to exactly `[height, width, 3]` in case the canvas rounded a pixel."""
    image = image[:height, :width]
    pad_h, pad_w = height - image.shape[0], width - image.shape[1]
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(image, dtype=np.uint8)


def render_frame(scenario: Scenario, states: ObjectState, t: int, ego_trail_xy: np.ndarray | None = None,
                 width_px: int = 640, height_px: int = 640, view_m: float = 80.0, show_ghost: bool = True) -> np.ndarray:
    """One frame `[height_px, width_px, 3]` uint8: `states` `[N]` at log step `t` over the scenario's map.

    ego_trail_xy: `[K, 2]` points of the ego's simulated path so far (drawn as a line).
    view_m: the width of the view in metres (the height follows the image's aspect ratio).
    """
    renderer = Renderer(scenario, width_px, height_px, view_m)
    try:
        return renderer.frame(states, t, ego_trail_xy, show_ghost=show_ghost)
    finally:
        renderer.close()


def _state_at(states: ObjectState, h: int) -> ObjectState:
    return ObjectState(**{f: getattr(states, f)[h] for f in ("x", "y", "z", "vel_x", "vel_y", "yaw", "length",
                                                             "width", "height", "valid")})


def render_episode(scenario: Scenario, states_over_time: ObjectState, timesteps: np.ndarray | None = None,
                   stride: int = 1, width_px: int = 640, height_px: int = 640, view_m: float = 80.0) -> list[np.ndarray]:
    """Frames of an episode: `states_over_time` `[H, N]` (e.g. `Rollout.states`), every `stride`-th step.

    timesteps: `[H]` log step of each state (`Rollout.timesteps`); default: the episode ends
    at the last log step, so state h is at step `T - H + h`.
    """
    if stride < 1:
        raise ValueError(f"render_episode: stride must be >= 1, got {stride}")
    scenario = _host(scenario)
    states_over_time = _host(states_over_time)
    if np.ndim(states_over_time.x) != 2:
        raise ValueError(f"render_episode: states_over_time must be `[H, N]`, got shape "
                         f"{list(np.shape(states_over_time.x))}")
    horizon = states_over_time.x.shape[0]
    num_steps = scenario.log_trajectory.x.shape[-1]
    if timesteps is None:
        timesteps = np.arange(horizon) + (num_steps - horizon)
    timesteps = np.asarray(timesteps).reshape(-1)
    if timesteps.shape[0] != horizon:
        raise ValueError(f"render_episode: {timesteps.shape[0]} timesteps for {horizon} states")
    renderer = Renderer(scenario, width_px, height_px, view_m)
    ego = renderer.ego_index
    trail = np.stack([states_over_time.x[:, ego], states_over_time.y[:, ego]], -1)
    trail_valid = states_over_time.valid[:, ego].astype(bool)
    frames = []
    try:
        for h in range(0, horizon, stride):
            upto = trail[: h + 1][trail_valid[: h + 1]]
            frames.append(renderer.frame(_state_at(states_over_time, h), int(timesteps[h]), upto))
    finally:
        renderer.close()
    return frames


def _gif_palette():
    """One fixed 256-colour palette for every GIF frame: the exact drawing colours (so small
    objects keep their type colour) plus a 6x6x6 colour cube and a grey ramp for blends."""
    from PIL import Image
    named = [*COLORS.values(), *TYPE_COLORS.values(), OTHER_COLOR, *LIGHT_COLORS.values(), "#000000", "#ffffff",
             "#202020", "#888888"]
    colors = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in named]
    levels = (0, 51, 102, 153, 204, 255)
    colors += [(r, g, b) for r in levels for g in levels for b in levels]
    colors += [(v, v, v) for v in range(8, 256, 16)]
    colors = list(dict.fromkeys(colors))[:256]
    colors += [(0, 0, 0)] * (256 - len(colors))
    image = Image.new("P", (1, 1))
    image.putpalette([v for c in colors for v in c])
    return image


def save_gif(frames: list[np.ndarray], path: str | os.PathLike, fps: float = 10) -> Path:
    """Writes frames `[H, W, 3]` uint8 as a looping GIF."""
    from PIL import Image
    if not frames:
        raise ValueError("save_gif: no frames")
    if fps <= 0:
        raise ValueError(f"save_gif: fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    palette = _gif_palette()
    images = [Image.fromarray(np.asarray(f, np.uint8)).quantize(palette=palette, dither=Image.Dither.NONE)
              for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)),
                   loop=0, optimize=False, disposal=1)
    return path


def render_episode_gif(scenario: Scenario, states_over_time: ObjectState, path: str | os.PathLike, fps: float = 10,
                       stride: int = 1, timesteps: np.ndarray | None = None, width_px: int = 480,
                       height_px: int = 480, view_m: float = 80.0) -> Path:
    """Renders `states_over_time` `[H, N]` every `stride` steps (ceil(H / stride) frames) to a GIF."""
    frames = render_episode(scenario, states_over_time, timesteps, stride, width_px, height_px, view_m)
    return save_gif(frames, path, fps)


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Writes an image `[H, W, 3]` (or RGBA) uint8 as PNG."""
    from PIL import Image
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"save_png: expected a [H, W, 3] uint8 image, got shape {list(image.shape)} {image.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return path
