"""Self-play training: one shared policy drives every controlled object (BC, APG, PPO, GRPO), masks,
per-agent rewards and episode ends, and the multi-agent gradient against finite differences."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _train_utils import scenarios, tiny_config
from jaxloop.config import APG, EnvSettings
from jaxloop.data.toy import make_track_scenario
from jaxloop.io.policies import make_actor
from jaxloop.sim import agents, rewards
from jaxloop.sim.actor import Actor, ActorOutput, policy_controlled, stateless_init
from jaxloop.sim.metrics.agents import agent_episode_metrics, agent_step_metrics
from jaxloop.sim.datatypes import DT, trajectory_at
from jaxloop.sim.env import Env
from jaxloop.sim.rollout import rollout
from jaxloop.train.common import agent_valid, collect_agents, init_state, make_context, start_agents
from jaxloop.train.trainer import make_trainer

H = 8


def agent_log_distance(scenario, prev_state, state, weights=None):
    """Per object `[N]`: distance (m) to its logged position at the new step (0 where the log is invalid)."""
    del prev_state, weights
    log = trajectory_at(scenario.log_trajectory, state.timestep)
    d = jnp.sqrt((state.current.x - log.x) ** 2 + (state.current.y - log.y) ** 2 + 1e-6)
    return jnp.where(log.valid, d, 0.0)


def agent_forward_progress(scenario, prev_state, state, weights=None):
    """Per object `[N]`: metres moved along +x (the toy road's direction) this step."""
    del scenario, weights
    return state.current.x - prev_state.current.x


def agent_speed_gain(scenario, prev_state, state, weights=None):
    """Per object `[N]`: the gain in speed along +x this step (m/s): an episode's return is the speed gained."""
    del scenario, weights
    return state.current.vel_x - prev_state.current.vel_x


CASES = {
    "bc": dict(config=dict(), reward_fn=None, surrogate_fn=None, metric=("loss", -1)),
    "apg": dict(config=dict(learning_rate=1e-3, algo=APG(remat=False)), reward_fn=None, surrogate_fn=agent_log_distance,
                metric=("loss", -1)),
    "ppo": dict(config=dict(), reward_fn=agent_speed_gain, surrogate_fn=None, metric=("episode_return", 1)),
    "grpo": dict(config=dict(batch_size=2), reward_fn=agent_speed_gain, surrogate_fn=None,
                 metric=("episode_return", 1)),
}


@pytest.fixture(scope="module")
def data():
    return scenarios(count=4, num_objects=5, num_steps=11 + H)


def selfplay_config(name, /, **changes):
    return tiny_config(name, **{"controlled": "vehicles", "horizon": H, "batch_size": 4, **changes})


def selfplay_trainer(name, /, **changes):
    """The self-play trainer of CASES[name], its config changed by `changes`."""
    case = CASES[name]
    config = selfplay_config(name, **{**case["config"], **changes})
    return make_trainer(config, reward_fn=case["reward_fn"], surrogate_fn=case["surrogate_fn"])


@pytest.fixture(scope="module")
def apg_trainer():
    """The self-play APG trainer (bc_coef 0), shared so its step compiles once for the tests that run it."""
    return selfplay_trainer("apg")


@pytest.mark.parametrize("algo", list(CASES))
def test_selfplay_step_compiles_once_and_learns(algo, data, request):
    case = CASES[algo]
    trainer = request.getfixturevalue("apg_trainer") if algo == "apg" else selfplay_trainer(algo)
    config = trainer.config
    assert trainer.ctx.selfplay
    state = trainer.init(jax.random.PRNGKey(0))
    batch = trainer.shard(jax.tree.map(lambda a: a[:config.batch_size], data))
    history = []
    for i in range(20):
        state, metrics = trainer.train_step(state, batch, jax.random.PRNGKey(i), trainer.params)
        history.append(metrics)
    history = jax.device_get(history)
    assert trainer.train_step._cache_size() == 1
    name, sign = case["metric"]
    values = np.array([m[name] for m in history])
    assert np.all(np.isfinite(values)) and int(state.skipped) == 0
    if algo == "bc":  # every controlled vehicle is a sample: 4 vehicles x 4 steps per scenario
        assert history[0]["valid_samples"] == 4 * 4 * config.batch_size
    if algo == "apg":
        assert history[0]["agents"] == 4.0
    first, last = values[:5].mean(), values[-5:].mean()
    # Lower loss or more speed gained (of at most 0.8 s * 6 m/s^2 = 4.8 m/s) after 20 steps.
    margin = 0.05 * abs(first) + (0.5 if sign > 0 else 0.0)
    assert sign * (last - first) > margin, (algo, first, last)


def test_controlled_fn_narrows_agents_and_the_rest_follow_their_model(data):
    scenario = jax.tree.map(lambda a: a[0], data)
    not_ego = lambda sc: ~sc.object_metadata.is_sdc  # self-play among the other vehicles only
    ctx = make_context(selfplay_config("ppo"), reward_fn=agent_forward_progress, controlled_fn=not_ego)
    params = init_state(ctx, jax.random.key(0)).params
    traj, last_value, final = jax.jit(lambda w: collect_agents(ctx, w, ctx.params, scenario, jax.random.key(3), H))(
        params)
    agents_mask = np.array([False, True, True, True, False])
    assert traj.valid.shape == (H, 5) and last_value.shape == (5,)
    np.testing.assert_array_equal(np.asarray(traj.valid).any(0), agents_mask)
    np.testing.assert_array_equal(np.asarray(traj.reward)[:, ~agents_mask], 0.0)
    # The ego (left out by controlled_fn) and the padding replay their log exactly ...
    log = trajectory_at(scenario.log_trajectory, 10 + H)
    for f in ("x", "y", "yaw", "vel_x", "vel_y"):
        np.testing.assert_array_equal(np.asarray(getattr(final.current, f))[~agents_mask],
                                      np.asarray(getattr(log, f))[~agents_mask])
    # ... while the agents are driven by the (untrained) policy.
    assert np.abs(np.asarray(final.current.x - log.x)[agents_mask]).min() > 1e-3
    # With IDM traffic the left-out objects get the IDM model, the agents the policy.
    ctx_idm = make_context(selfplay_config("ppo", non_ego_agent="idm"), controlled_fn=not_ego)
    _, state = start_agents(ctx_idm, ctx_idm.env, scenario, jax.random.key(0))
    assert int(state.agent_kind[0]) == agents.AGENT_IDM
    np.testing.assert_array_equal(np.asarray(state.agent_kind)[1:4], agents.AGENT_POLICY)
    # A vehicle that appears later in the log is no agent: it replays its log (and appears with it).
    late = make_track_scenario([_track(10.0 * TIME, 0.0), {**_track(40.0 + 10.0 * TIME, 0.0),
                                                           "valid": np.arange(30) >= 14}])
    ctx_all = make_context(selfplay_config("ppo"))
    _, state = start_agents(ctx_all, ctx_all.env, late, jax.random.key(0))
    np.testing.assert_array_equal(state.agent_kind, [agents.AGENT_POLICY, agents.AGENT_LOG])
    with pytest.raises(ValueError, match="controlled_fn"):
        make_context(tiny_config("ppo"), controlled_fn=not_ego)  # the ego-only setting has no agents to narrow
    with pytest.raises(ValueError, match="EnvSettings.controlled"):
        EnvSettings(controlled="cars")
    assert tiny_config("bc", controlled="all").env_config().controlled == "all"


def test_agent_episode_ends_mask_later_steps():
    # end [H, N]: agent 0 ends at step 1 (that step counts, later ones not); agent 1 never; agent 2 is no agent.
    end = jnp.array([[False, False, False], [True, False, False], [False, False, False], [True, False, False]])
    ok = jnp.ones((4, 3), bool).at[3, 1].set(False)
    valid = agent_valid(jnp.array([True, True, False]), end, ok)
    np.testing.assert_array_equal(valid, [[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])


def _track(x, y):
    return {"x": np.asarray(x, np.float32), "y": np.full_like(np.asarray(x, np.float32), y)}


TIME = np.arange(30) * DT


def test_agent_rewards_by_hand():
    # Object 0 and 1 overlap in the simulation but not in the log; 2 and 3 overlap in the log (label noise).
    tracks = [_track(10.0 * TIME, 0.0), _track(40.0 + 10.0 * TIME, 0.0), _track(80.0 + 10.0 * TIME, 3.5),
              _track(82.0 + 10.0 * TIME, 3.5)]
    scenario = make_track_scenario(tracks)
    env = Env(tiny_config("apg", controlled="vehicles").env_config())
    weights = rewards.RewardWeights(progress=1.0, collision=10.0, offroad=0.0, log_divergence=0.5)

    @jax.jit
    def terms(shift):
        prev = env.reset(scenario, jax.random.key(0))
        log_next = trajectory_at(scenario.log_trajectory, prev.timestep + 1)
        new = prev.replace(timestep=prev.timestep + 1, current=log_next)
        # Object 0 moved to 3 m behind object 1 (x = 48 at t = 11).
        moved = new.replace(current=new.current.replace(x=new.current.x.at[0].set(log_next.x[1] - 3.0 + shift)))
        loss_of_1 = lambda x: rewards.agent_step_surrogate_loss(
            scenario, prev, moved.replace(current=moved.current.replace(x=x)), weights)[1]
        return dict(hit=rewards.agent_collision(moved, log_next), hit_log=rewards.agent_collision(new, log_next),
                    step=rewards.agent_path_step(scenario, prev, new),
                    r_log=rewards.agent_step_reward(scenario, prev, new, weights),
                    r=rewards.agent_step_reward(scenario, prev, moved, weights),
                    loss_log=rewards.agent_step_surrogate_loss(scenario, prev, new, weights),
                    loss=rewards.agent_step_surrogate_loss(scenario, prev, moved, weights),
                    grad=jax.grad(loss_of_1)(moved.current.x))

    out = jax.device_get(terms(0.0))
    np.testing.assert_array_equal(out["hit"], [True, True, False, False])
    np.testing.assert_array_equal(out["hit_log"], [False] * 4)
    # On the log: 1 m along each own path (10 m/s), no divergence, so the reward is the progress.
    np.testing.assert_allclose(out["step"], 1.0, atol=1e-4)
    np.testing.assert_allclose(out["r_log"], 1.0, atol=1e-2)
    # Object 0's path ends at x = 29, so it progressed 29 - 10 m, diverged 37 m and collides;
    # object 1, on its log, collides too.
    np.testing.assert_allclose(out["r"][:2], [19.0 - 10.0 - 0.5 * 37.0, 1.0 - 10.0], atol=1e-2)
    # The smooth loss: the logged overlap of 2 and 3 is exempt, the simulated one of 0 and 1 is not,
    # and object 1's loss pushes object 0 back (d loss_1 / d x_0 > 0).
    np.testing.assert_allclose(out["loss_log"][2:], out["loss"][2:], atol=1e-5)
    assert out["loss"][1] > out["loss_log"][1] + 5.0
    assert np.isfinite(out["grad"]).all() and out["grad"][0] > 1.0


def perturbed_actor(inner: Actor, agent: int) -> Actor:
    """`inner` with `delta` added to `agent`'s normalised acceleration at every step (params: (net, delta))."""

    def select_action(params, obs, memory, key):
        net, delta = params
        out = inner.select_action(net, obs, memory, key)
        return out.replace(action=out.action.at[agent, 0].add(delta))

    return Actor(init=inner.init, select_action=select_action, name="perturbed")


def test_multi_agent_gradient_matches_finite_differences():
    # A leads, B follows 12 m behind in the same lane; both are driven by one random policy.
    # B's final position depends on A's acceleration only through B's observation of A.
    scenario = make_track_scenario([_track(12.0 + 8.0 * TIME, 0.0), _track(8.0 * TIME, 0.0)], num_objects=2)
    config = tiny_config("apg", controlled="vehicles", horizon=10)
    ctx = make_context(config)
    net = init_state(ctx, jax.random.key(1)).params
    policy = make_actor(ctx.graphdef, config.obs, controlled="vehicles")
    env = ctx.env

    @jax.jit
    def follower_x(delta):
        state = env.reset(scenario, jax.random.key(0))
        actor = perturbed_actor(policy, agent=0)
        final, _ = rollout(env, scenario, state, actor, 10, params=ctx.params.env, actor_params=(net, delta))
        return final.current.x[1]

    grad = float(jax.grad(follower_x)(0.0))
    eps = 0.05
    fd = float(follower_x(eps) - follower_x(-eps)) / (2 * eps)
    assert abs(grad) > 1e-3
    np.testing.assert_allclose(grad, fd, rtol=0.05, atol=1e-4)


def test_apg_bc_coef_adds_the_bc_loss(data, apg_trainer):
    """L = L_apg + bc_coef * L_bc on the same batch and key; L_apg is what bc_coef = 0 computes
    (the shared bc_coef = 0 trainer: only the bc_coef = 0.5 step compiles here)."""
    batch = jax.tree.map(lambda a: a[:4], data)
    losses = {}
    for coef, trainer in ((0.0, apg_trainer), (0.5, selfplay_trainer("apg", algo=APG(remat=False, bc_coef=0.5)))):
        state = trainer.init(jax.random.PRNGKey(0))
        _, metrics = trainer.train_step(state, trainer.shard(batch), jax.random.PRNGKey(1), trainer.params)
        losses[coef] = jax.device_get(metrics)
    with_bc = losses[0.5]
    assert with_bc["bc_loss"] > 1e-3  # an untrained policy is far from the expert actions
    np.testing.assert_allclose(with_bc["apg_loss"], losses[0.0]["loss"], rtol=1e-5)
    np.testing.assert_allclose(with_bc["loss"], losses[0.0]["loss"] + 0.5 * with_bc["bc_loss"], rtol=1e-5)


def test_goal_behavior_remove_takes_an_agent_out_after_its_goal():
    # Object 1's log drives 10 m (x 20 -> 30 at 10 m/s over steps 0..10) and then stops at its goal (x = 30);
    # driven from step 0 at constant speed (zero action: 1 m a step), it is within GOAL_RADIUS (2 m) of the
    # goal at step 8 (x = 28) and would touch object 2, parked at x = 38 (4.5 m boxes), from x > 33.5 on.
    # "remove": it leaves the scene the step after it reached its goal, so the contact never happens;
    # "continue": it drives on into object 2.
    x1 = np.minimum(20.0 + 10.0 * TIME, 30.0)
    tracks = [_track(-60.0 + 0.0 * TIME, 0.0), dict(x=x1, y=np.zeros_like(x1), vel_x=np.full_like(x1, 10.0)),
              _track(38.0 + 0.0 * TIME, 0.0)]
    scenario = make_track_scenario(tracks)
    zero = Actor(init=stateless_init, name="zero", select_action=lambda p, obs, m, k: ActorOutput(
        action=jnp.zeros((obs.state.current.x.shape[-1], 2)), controlled=policy_controlled(obs.state), actor_state=m,
        aux={}))
    out = {}
    for behavior in ("continue", "remove"):
        config = tiny_config("apg", controlled="vehicles", goal_behavior=behavior)
        env = Env(dataclasses.replace(config.env_config(), init_steps=1))
        state = env.reset(scenario, jax.random.key(0))
        _, ro = jax.jit(lambda s: rollout(env, scenario, s, zero, 15, extras_fn=agent_step_metrics))(state)
        out[behavior] = jax.device_get(ro)
    cont, rem = out["continue"], out["remove"]
    x = rem.states.x[:, 1]
    reached = int(np.argmax(np.abs(x - 30.0) <= 2.0))
    valid = rem.states.valid[:, 1]
    assert valid[:reached + 1].all() and not valid[reached + 1:].any()  # the goal step counts, then it is gone
    assert cont.states.valid[:, 1].all()
    hit = lambda o: (o.extras["agent_contact"][:, 1, 2] != 0).any()
    assert hit(cont) and not hit(rem)
    # Its episode: goal reached, so its route is complete, though it left the scene 2 m short of the log's end
    # (progress 8 of 10 m would read 0.8); it is charged no collision.
    m = jax.device_get(agent_episode_metrics(scenario, jax.tree.map(jnp.asarray, rem)))
    np.testing.assert_allclose([m["goal_reached"][1], m["completion"][1], m["collision"][1]], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(m["progress"][1], 8.0, atol=1e-3)
    # The parked object 2 (path under GOAL_RADIUS) and the ego are never removed.
    assert rem.states.valid[:, 2].all() and rem.states.valid[:, 0].all()
    with pytest.raises(ValueError, match="goal_behavior"):
        EnvSettings(goal_behavior="remove")  # the ego-only mode has no goal to leave at


def test_done_at_goal_off_lets_the_episode_run_past_the_goal():
    # Object 1 moved onto its goal (its last logged position): its episode ends there by default, not with
    # done_at_goal=False (then only its log's end or a collision / offroad ends it).
    from jaxloop.train.common import agent_step_events, route_goals
    x1 = np.minimum(20.0 + 5.0 * TIME, 30.0)  # at the start (step 10) x = 25, 5 m from its goal
    scenario = make_track_scenario([_track(-60.0 + 0.0 * TIME, 0.0), dict(x=x1, y=np.zeros_like(x1))])
    ends = []
    for done_at_goal in (True, False):
        ctx = make_context(tiny_config("apg", controlled="vehicles", done_at_goal=done_at_goal))
        prev = ctx.env.reset(scenario, jax.random.key(0))
        paths, goal_far = route_goals(scenario, prev)
        new = prev.replace(timestep=prev.timestep + 1, current=prev.current.replace(x=prev.current.x.at[1].set(30.0)))
        ends.append(bool(agent_step_events(ctx, scenario, prev, new, paths, goal_far)["agent_end"][1]))
    assert ends == [True, False]
    with pytest.raises(ValueError, match="done_at_goal"):
        EnvSettings(controlled="vehicles", goal_behavior="remove", done_at_goal=False)
