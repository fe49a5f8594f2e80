"""Training: behaviour cloning, analytic policy gradients, PPO and GRPO in one compiled step.

- `jaxloop.config.Experiment`: the static configuration of a run (saved beside checkpoints), and
  `jaxloop.config.Params`: the traced reward weights, agent constants and action limits.
- `trainer.make_trainer(experiment, mesh)`: `.init(key) -> TrainState`, `.train_step(state, batch,
  key, params)` (one jit, batch sharded over the mesh's data axis); `trainer.make_train(experiment,
  scenarios)`: a pure `train(key, params)` for small experiments (vmappable over seeds and params).
- `bc`, `apg`, `ppo`, `grpo`: the algorithms' per-scenario losses / rollouts and step functions;
  the batch axis is added once (`jaxloop.sim.rollout.over_batch`).
- `state.TrainState`, guarded updates (non-finite updates skipped and counted).
- `parallel`: mesh, shardings, multi-host notes.
- `loop.run` / `jaxloop train`: the Python loop with logging, checkpoints, resume.

The policy drives the ego (`env.controlled="sdc"`), or in self-play (`"vehicles"`, `"all"`)
one shared policy drives every controlled object with its own reward / loss `[N]`
(`common`, "Self-play"); a trained policy drives every object through
`jaxloop.io.policies.make_actor(..., controlled="vehicles")`.
"""
