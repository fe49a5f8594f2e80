"""`TrainState` and the guarded optimiser update shared by every trainer.

A non-finite loss or gradient, or an update that would leave a non-finite parameter or
optimiser moment (an overflowing step, an infinite learning rate), skips the update
inside `jit`: the new parameters and optimiser state are selected with `where` against
the old ones, so the state only ever holds finite values, and the skip is counted in
`TrainState.skipped` (total) and `TrainState.consecutive_skipped` (in a row).
`freeze_after` stops a run's state inside the compiled step once the count in a row
reaches a limit; the training loop sees it at its next log / checkpoint step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct



@struct.dataclass
class TrainState:
    step: jax.Array  # [] int32, train steps taken
    params: nnx.State  # the policy's parameters (replicated)
    opt_state: optax.OptState
    ref_params: Any  # frozen reference policy (GRPO's KL anchor) or None
    skipped: jax.Array  # [] int32, updates skipped for a non-finite loss / gradient
    consecutive_skipped: jax.Array  # [] int32, skipped in a row (reset by a good update)


def make_optimizer(learning_rate: float, max_grad_norm: float, decay_steps: int = 0,
                   final_lr_fraction: float = 0.1) -> optax.GradientTransformation:
    """Global-norm clipping then Adam; with `decay_steps > 0` the learning rate follows a
    cosine from `learning_rate` to `final_lr_fraction * learning_rate` over that many
    updates and stays there (the count lives in the optimiser state, so resuming keeps it)."""
    lr = learning_rate
    if decay_steps > 0:
        lr = optax.cosine_decay_schedule(learning_rate, decay_steps, alpha=final_lr_fraction)
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(lr))


def create(params: nnx.State, optimizer: optax.GradientTransformation, ref_params: Any = None) -> TrainState:
    """Step 0: `params`, a fresh optimiser state and no skips (each step's key comes from the loop)."""
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=optimizer.init(params), ref_params=ref_params,
                      skipped=zero, consecutive_skipped=zero)


def all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def apply_update(state: TrainState, grads: nnx.State, loss: jax.Array,
                 optimizer: optax.GradientTransformation) -> tuple[TrainState, dict]:
    """One optax update, skipped (params and optimiser state unchanged) if `loss`, `grads` or the result is not finite."""
    with jax.named_scope("train.update"):
        finite_in = jnp.isfinite(loss) & all_finite(grads)
        safe = jax.tree.map(lambda g: jnp.where(finite_in, g, jnp.zeros_like(g)), grads)
        updates, opt_state = optimizer.update(safe, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Finite gradients can still give a non-finite step (lr overflow): such a state must never be kept.
        finite = finite_in & all_finite(params) & all_finite(opt_state)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = state.replace(
            params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
            skipped=state.skipped + (~finite).astype(jnp.int32),
            consecutive_skipped=jnp.where(finite, 0, state.consecutive_skipped + 1).astype(jnp.int32))
        return new_state, {"grad_norm": optax.tree.norm(safe), "update_skipped": (~finite).astype(jnp.float32)}


def freeze_after(step_fn, max_consecutive_skips: int):
    """`step_fn` whose state stops changing (step count included) once `max_consecutive_skips`
    updates in a row were skipped: the frozen state is the last good one, its `step` the step
    the run diverged at, and no host sync per step is needed to notice."""
    if max_consecutive_skips < 1:
        raise ValueError(f"freeze_after: max_consecutive_skips must be >= 1, got {max_consecutive_skips}")

    def guarded(state: TrainState, batch, key, params):
        new, metrics = step_fn(state, batch, key, params)
        frozen = state.consecutive_skipped >= max_consecutive_skips
        new = jax.tree.map(lambda old, upd: jnp.where(frozen, old, upd), state, new)
        return new, {**metrics, "frozen": frozen.astype(jnp.float32)}

    return guarded
