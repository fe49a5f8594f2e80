"""Training: behaviour cloning, analytic policy gradients, PPO and GRPO in one compiled step.

- `config.TrainConfig`: the static configuration of a run (saved beside checkpoints).
- `trainer.make_trainer(config, mesh)`: `.init(key) -> TrainState`, `.train_step(state, batch, key)`
  (one jit, batch sharded over the mesh's data axis); `trainer.make_train(config, scenarios,
  num_steps)`: a pure `train(key)` for small experiments (vmappable over seeds).
- `bc`, `apg`, `ppo`, `grpo`: the algorithms' losses and step functions.
- `state.TrainState`, guarded updates (non-finite updates skipped and counted).
- `parallel`: mesh, shardings, multi-host notes.
- `loop.run` / `jaxloop train`: the Python loop with logging, checkpoints, resume.

The policy drives the ego (`EnvConfig.controlled="sdc"`) during training; a trained policy
can drive every object through `jaxloop.io.policies.make_policy_fn(..., controlled="vehicles")`.
"""
