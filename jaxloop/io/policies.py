"""Trained policies as `jaxloop.sim.rollout.PolicyFn`s: `policy(scenario, state, key) -> action`.

Loading lives here, below both training and evaluation: a training run's checkpoints or
an exported artefact (`jaxloop export`) become a policy any evaluator can roll out.

    policy, experiment = load_policy("runs/bc")  # a run, its checkpoints/ or an export directory
    env = Env(experiment.env_config())           # normalised actions: the policy emits [-1, 1]
    final, out = rollout(env, scenario, env.reset(scenario, key), policy, num_steps)

The action is `[A]` for the ego (`controlled="sdc"`) or `[N, A]` when one policy drives
every object (`controlled="vehicles"` / `"all"`: every object is an observer; the env
applies the action only to the objects it controls). Driving every object, each observer
follows its own logged path as its route (`agent_features`), as self-play training does.

The same network as an `Actor` (`jaxloop.sim.actor`), its params passed at every step and
its aux holding the log-prob and value a trainer reads:

    actor = actor_from_params(experiment, deterministic=False)
    final, out = rollout(env, scenario, state, actor, num_steps, actor_params=params)
    out.aux["log_prob"], out.aux["value"]    # [H] each
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxloop.config import EXPERIMENT_KEY, Experiment, from_saved, to_dict
from jaxloop.io.checkpoint import from_flat_dict, to_flat_dict
from jaxloop.policy import networks
from jaxloop.policy.observation import Features, ObsConfig, features
from jaxloop.sim.actor import Actor, ActorOutput, Observation, per_object_action, policy_controlled, stateless_init
from jaxloop.sim.datatypes import Route, Scenario, SimState
from jaxloop.sim.metrics.paths import log_paths
from jaxloop.sim.rollout import PolicyFn

CONFIG_KEY = EXPERIMENT_KEY  # the `Experiment` in a checkpoint's config.json and an export's metadata


def build_model(config: Experiment, key: jax.Array) -> nnx.Module:
    """The policy network an experiment describes (PPO's with its value head), freshly initialised from `key`."""
    return networks.make_model(config.network, config.obs, config.obs.history_length,
                               config.env_config().action_dim, key)


def agent_features(scenario: Scenario, state: SimState, observers: jax.Array, obs_config: ObsConfig) -> Features:
    """Features `[len(observers), ...]` of several observers, each with its own logged path as its route.

    The route waypoints of observer i are read along object i's logged trajectory
    (`jaxloop.sim.metrics.paths.log_paths`, the path self-play rewards progress on), so
    every agent sees where its own route goes and where it ends; everything else is
    `jaxloop.policy.observation.features` from that observer.
    """
    paths = jax.tree.map(jnp.asarray, log_paths(scenario))

    def one(i):
        route = Route(xy=paths.xy[i], arc_length=paths.arc_length[i], valid=paths.span[i])
        return features(scenario.replace(route=route), state, i, obs_config)

    return jax.vmap(one)(observers)


def ego_features(scenario: Scenario, state: SimState, obs_config: ObsConfig, own_path: bool = False) -> Features:
    """The ego's features: its route is the scenario's, or with `own_path` its own logged path.

    A self-play run (`env.controlled` "vehicles" / "all") trained every agent, the ego
    included, on its own logged path as its route (`agent_features`): a route that ends at
    the agent's goal. Its network driving the ego alone must see the route it was trained
    on (`trained_on_own_path`): the scenario's route runs on past the logged goal (2.6x
    the logged path on procedural `test`), which such a policy reads as a road with no end.
    """
    ego = scenario.object_metadata.sdc_index
    if own_path:
        return jax.tree.map(lambda a: a[0], agent_features(scenario, state, ego[None], obs_config))
    return features(scenario, state, ego, obs_config)


def trained_on_own_path(config: Experiment) -> bool:
    """Whether `config`'s policy saw its own logged path as its route in training (a self-play run)."""
    return config.env.controlled != "sdc"


def make_policy_fn(model_graphdef: nnx.GraphDef, params: nnx.State, obs_config: ObsConfig,
                   deterministic: bool = True, controlled: str = "sdc", own_path: bool = False) -> PolicyFn:
    """A rollout policy from a model's graph definition and parameters.

    deterministic: `tanh(mean)`; otherwise a tanh-Gaussian sample drawn with `key`.
    own_path: the ego (`controlled="sdc"`) sees its own logged path as its route (`ego_features`).
    """

    def policy(scenario: Scenario, state: SimState, key: jax.Array) -> jax.Array:
        model = nnx.merge(model_graphdef, params)
        if controlled == "sdc":
            out = model(ego_features(scenario, state, obs_config, own_path))
        else:
            observers = jnp.arange(state.current.x.shape[-1])
            out = model(agent_features(scenario, state, observers, obs_config))
        return networks.mode(out) if deterministic else networks.sample(out, key)[0]

    return policy


def make_actor(model_graphdef: nnx.GraphDef, obs_config: ObsConfig, deterministic: bool = True,
               controlled: str = "sdc", record_features: bool = False, name: str = "policy") -> Actor:
    """The learned policy as an `Actor`: `select_action(params, observation, (), key)`, `params` the model's.

    deterministic: `tanh(mean)`, aux `{"value"}`; otherwise a tanh-Gaussian sample drawn
    with `key`, aux `{"u": pre-tanh sample [.., A], "log_prob": [..], "value": [..]}`
    (`[]` per entry for the ego, `[N]` per object when one policy drives every object).
    `record_features` adds the observation features the action was computed from
    (`aux["feats"]`, what an on-policy trainer re-evaluates). The actor drives the ego
    (`controlled="sdc"`) or every object the environment lets a policy drive.
    """

    def act(params: nnx.State, feats: Features, key: jax.Array) -> tuple[jax.Array, dict]:
        out = nnx.merge(model_graphdef, params)(feats)
        if deterministic:
            return networks.mode(out), {"value": out.value}
        action, u, log_prob = networks.sample(out, key)
        return action, {"u": u, "log_prob": log_prob, "value": out.value}

    return features_actor(act, obs_config, controlled, record_features, name)


def features_actor(act, obs_config: ObsConfig, controlled: str = "sdc", record_features: bool = False,
                   name: str = "policy") -> Actor:
    """An `Actor` of `act(params, features [M, ...] or one observer's, key) -> (action [M, A] or [A], aux)`.

    `controlled="sdc"`: the ego observes (`features` from the SDC), its `[A]` action is
    broadcast to `[N, A]` and only the ego is in the mask. Otherwise every object is an
    observer with its own logged path as its route (`agent_features`, `M = N`) and the mask
    is the objects the environment lets a policy drive (`policy_controlled`). The network
    of `make_actor` and an exported artefact (`exported_actor`) both drive through it.
    """

    def select_action(params, obs: Observation, actor_state, key: jax.Array) -> ActorOutput:
        scenario, state = obs.scenario, obs.state
        if controlled == "sdc":
            ego = scenario.object_metadata.sdc_index
            feats = features(scenario, state, ego, obs_config)
            mask = jnp.arange(state.current.x.shape[-1]) == ego
        else:
            feats = agent_features(scenario, state, jnp.arange(state.current.x.shape[-1]), obs_config)
            mask = policy_controlled(state)
        action, aux = act(params, feats, key)
        if record_features:
            aux["feats"] = feats
        if controlled == "sdc":
            action = per_object_action(action[None], state)
        return ActorOutput(action=action, controlled=mask, actor_state=actor_state, aux=aux)

    return Actor(init=stateless_init, select_action=select_action, name=name)


def actor_from_params(config: Experiment, deterministic: bool = True, controlled: str = "sdc",
                      record_features: bool = False) -> Actor:
    """The `Actor` of `config`'s network (`make_actor`); roll it out with `actor_params` = the trained params."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model(config, jax.random.PRNGKey(0))))
    return make_actor(graphdef, config.obs, deterministic, controlled, record_features)


def policy_from_params(config: Experiment, params: nnx.State, deterministic: bool = True,
                       controlled: str = "sdc") -> PolicyFn:
    """The rollout policy of trained `params` (e.g. `TrainState.params` of `make_train`) under their `config`.

    The policy emits normalised actions: roll it out in `Env(config.env_config())`.
    """
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model(config, jax.random.PRNGKey(0))))
    return make_policy_fn(graphdef, params, config.obs, deterministic, controlled,
                          own_path=trained_on_own_path(config))


def config_from_checkpoint(ckpt_dir: str | os.PathLike) -> Experiment:
    """The `Experiment` saved beside a checkpoint's weights (an older run's `TrainConfig` converted)."""
    from jaxloop.io.checkpoint import read_config
    data = read_config(resolve_checkpoint_dir(ckpt_dir))
    return from_saved(data, f"{ckpt_dir}/config.json")


def load_params(ckpt_dir: str | os.PathLike, config: Experiment | None = None,
                step: int | None = None) -> tuple[nnx.GraphDef, nnx.State, Experiment]:
    """(graphdef, params, config) of the checkpoint at `step` (latest if None); a run directory works too."""
    from jaxloop.io.checkpoint import CheckpointManager
    ckpt_dir = resolve_checkpoint_dir(ckpt_dir)
    config = config_from_checkpoint(ckpt_dir) if config is None else config
    graphdef, template = nnx.split(build_model(config, jax.random.PRNGKey(0)))
    manager = CheckpointManager(ckpt_dir)
    try:
        restored = manager.restore(step)
    finally:
        manager.close()
    params = from_flat_dict(template, to_flat_dict(restored), prefix="params")
    return graphdef, params, config


def load_policy_from_checkpoint(ckpt_dir: str | os.PathLike, step: int | None = None,
                                deterministic: bool = True, controlled: str = "sdc") -> tuple[PolicyFn, Experiment]:
    """`(policy_fn, config)` of a training checkpoint directory (or its run directory).

    The policy emits normalised actions: roll it out in `Env(config.env_config())`.
    """
    graphdef, params, config = load_params(ckpt_dir, step=step)
    return make_policy_fn(graphdef, params, config.obs, deterministic, controlled,
                          own_path=trained_on_own_path(config)), config


def batch_polymorphic_call(call: Any) -> Any:
    """`call(flat [b, D]) -> outputs [b, ...]` made vmappable, for a batch-polymorphic exported function.

    `jax.export`'s call has no batching rule; an artefact exported with a symbolic batch
    dimension already takes any batch, so a vmap over it folds the mapped axis into that
    batch dimension instead (and again for every nested vmap).
    """

    @jax.custom_batching.custom_vmap
    def batched(flat):
        return call(flat)

    @batched.def_vmap
    def _rule(axis_size, in_batched, flat):
        if not in_batched[0]:
            out = batched(flat)
            return out, jax.tree.map(lambda _: False, out)
        rows = flat.shape[1]
        out = batched(flat.reshape(axis_size * rows, *flat.shape[2:]))
        return (jax.tree.map(lambda a: a.reshape(axis_size, rows, *a.shape[1:]), out),
                jax.tree.map(lambda _: True, out))

    return batched


def config_of_export(export_dir: str | os.PathLike) -> Experiment:
    """The `Experiment` an exported policy directory (`jaxloop export`) was trained with (its metadata.json)."""
    from jaxloop.io.export import METADATA_FILE
    path = os.path.join(export_dir, METADATA_FILE)
    with open(path) as f:
        meta = json.load(f)
    return from_saved(meta.get("metadata", {}), path)


def load_exported_call(export_dir: str | os.PathLike) -> tuple[Any, Experiment]:
    """`(call, config)` of a directory written by `jaxloop export`: `call(flat [b, D]) -> action [b, A]`.

    The exported StableHLO function with its params bound, vmappable (`batch_polymorphic_call`);
    a `ValueError` naming the directory when it was exported with a fixed batch size.
    """
    from jaxloop.io.export import load_policy
    loaded = load_policy(export_dir)
    config = from_saved(loaded.metadata.get("metadata", {}), f"{export_dir}/metadata.json")
    if not loaded.metadata.get("batch_polymorphic", False):
        raise ValueError(f"{export_dir}: the exported policy has a fixed batch size; re-export it with a "
                         "symbolic batch dimension to evaluate it")
    params = loaded.params
    return batch_polymorphic_call(lambda flat: loaded.exported.call(params, flat)[0]), config


def exported_actor(export_dir: str | os.PathLike, controlled: str = "vehicles",
                   name: str = "policy") -> tuple[Actor, Experiment]:
    """`(actor, config)`: an exported artefact as an `Actor` (`features_actor`), deterministic, params ignored.

    The artefact maps one observer's flat features (`observation.flatten`) to its action,
    so with `controlled` "vehicles" / "all" it drives every object the environment lets a
    policy drive, each from its own view: the features `[N, ...]` flatten to one batch
    `[N, D]` of the batch-polymorphic call. aux is empty.
    """
    call, config = load_exported_call(export_dir)
    return call_actor(call, config.obs, controlled, name), config


def call_actor(call, obs_config: ObsConfig, controlled: str = "vehicles", name: str = "policy") -> Actor:
    """The `Actor` of `call(flat [b, D]) -> action [b, A]` (`load_exported_call`): see `exported_actor`."""
    from jaxloop.policy.observation import flatten

    def act(params, feats: Features, key: jax.Array) -> tuple[jax.Array, dict]:
        del params, key
        flat = flatten(feats)
        return (call(flat) if flat.ndim == 2 else call(flat[None])[0]), {}

    return features_actor(act, obs_config, controlled, name=name)


def load_exported_policy(export_dir: str | os.PathLike) -> tuple[PolicyFn, Experiment]:
    """`(policy_fn, config)` of a directory written by `jaxloop export`: the exported artefact itself runs.

    The policy computes the observation features in jaxloop, flattens them and calls the
    exported StableHLO function (deterministic action in [-1, 1]), so an evaluation of it
    checks exactly what a deployment would run. A self-play export sees its own logged
    path as the ego's route (`ego_features`), as in its training.
    """
    from jaxloop.policy.observation import flatten
    call, config = load_exported_call(export_dir)
    own_path = trained_on_own_path(config)

    def policy(scenario: Scenario, state: SimState, key: jax.Array) -> jax.Array:
        del key
        flat = flatten(ego_features(scenario, state, config.obs, own_path))
        return call(flat[None])[0]

    return policy, config


def load_policy(path: str | os.PathLike, step: int | None = None) -> tuple[PolicyFn, Experiment]:
    """A trained policy from a training run / checkpoint directory or an exported policy directory."""
    from jaxloop.io.export import METADATA_FILE
    if os.path.isfile(os.path.join(path, METADATA_FILE)):
        if step is not None:
            raise ValueError(f"{path}: an exported policy has one set of weights; --step does not apply")
        return load_exported_policy(path)
    return load_policy_from_checkpoint(path, step=step)


def export(ckpt: str | os.PathLike, out: str | os.PathLike, step: int | None = None) -> str:
    """Exports a checkpoint's deterministic policy: Features -> action in [-1, 1] (jax.export + npz params).

    The exported function takes the flat feature vector `[b, D]` of
    `jaxloop.policy.observation.flatten` (D from the saved observation config) and returns
    actions `[b, A]`.

    Args:
        ckpt: checkpoint directory written by `jaxloop train` (its `checkpoints/` folder or the run folder).
        out: output directory of the artefact.
        step: checkpoint step (default: the latest).

    Returns the output directory.
    """
    from jaxloop.io.export import export_policy
    ckpt_dir = resolve_checkpoint_dir(ckpt)
    graphdef, params, config = load_params(ckpt_dir, step=step)
    apply_fn, example = flat_apply_fn(graphdef, config)
    export_policy(apply_fn, params, [example], out,
                  metadata={CONFIG_KEY: to_dict(config), "input": "flat observation features",
                            "output": "normalised action in [-1, 1]"})
    print(f"exported {ckpt_dir} -> {out}")
    return str(out)


def flat_apply_fn(graphdef: nnx.GraphDef, config: Experiment) -> tuple[Any, jax.Array]:
    """`apply(params, flat_features [b, D]) -> action [b, A]` and an example input `[1, D]`."""
    from jaxloop.policy.observation import flat_dim, unflatten
    dim = flat_dim(config.obs)

    def apply(params, flat):
        feats = unflatten(flat, config.obs)
        return networks.mode(nnx.merge(graphdef, params)(feats))

    return apply, jnp.zeros((1, dim), jnp.float32)


def resolve_checkpoint_dir(path: str | os.PathLike) -> str:
    """A run directory's `checkpoints/` sub-folder if it has one, else the path itself."""
    sub = os.path.join(path, "checkpoints")
    return sub if os.path.isfile(os.path.join(sub, "config.json")) else str(path)
