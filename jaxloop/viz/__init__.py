"""jaxloop.viz: top-down rendering of scenarios and closed-loop episodes (PNG / GIF)."""

from jaxloop.viz.render import (Renderer, box_corners, light_color, render_episode, render_episode_gif, render_frame,
                                save_gif, save_png)

__all__ = ["Renderer", "box_corners", "light_color", "render_episode", "render_episode_gif", "render_frame",
           "save_gif", "save_png"]
