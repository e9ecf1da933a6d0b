"""envs: names, API conventions, seeding, autoreset, snapshots, bad input, the toy task and gym ids."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import gymnasium
import numpy as np
import pytest

import envs
from envs import toy
from harness.errors import UserError


def random_actions(env, steps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (steps, env.num_envs, env.act_dim)).astype(np.float32)


def rollout(env, actions: np.ndarray) -> list[tuple]:
    return [env.step(a) for a in actions]


def assert_same_rollouts(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b)
    for (obs_a, r_a, te_a, tr_a, info_a), (obs_b, r_b, te_b, tr_b, info_b) in zip(a, b, strict=True):
        np.testing.assert_array_equal(obs_a, obs_b)
        np.testing.assert_array_equal(r_a, r_b)
        np.testing.assert_array_equal(te_a, te_b)
        np.testing.assert_array_equal(tr_a, tr_b)
        assert info_a.keys() == info_b.keys()
        for key in info_a:
            np.testing.assert_array_equal(info_a[key], info_b[key])


# --- names ------------------------------------------------------------------------------


def test_canonical_names_and_aliases():
    assert envs.canonical_task("cheetah-run") == "cheetah-run"
    assert envs.canonical_task("CheetahRun") == "cheetah-run"
    assert envs.canonical_task("fingerturnhard") == "finger-turn_hard"
    assert envs.canonical_task("ball_in_cup-catch") == "ball_in_cup-catch"
    assert envs.canonical_task("toy-bimodal") == "toy-bimodal"
    assert envs.canonical_task("gym:Pendulum-v1") == "gym:Pendulum-v1"
    for alias, task in envs.ALIASES.items():
        assert envs.canonical_task(alias) == task


def test_unknown_names_list_close_matches():
    with pytest.raises(UserError, match="cheetah-run"):
        envs.canonical_task("cheetah-rn")
    # An alias is offered as its task, and a task once (it read "cheetah-run, CheetahRun, ...").
    with pytest.raises(UserError, match=r"Did you mean: hopper-stand, walker-stand, "):
        envs.canonical_task("HoperStand")
    with pytest.raises(UserError) as refused:
        envs.canonical_task("cheeta-run")
    assert "CheetahRun" not in str(refused.value) and str(refused.value).count("cheetah-run") == 2
    with pytest.raises(UserError, match="gym:Pendulum-v1"):
        envs.canonical_task("gym:Pendulum-v9")


def test_task_lists_ranges_and_description():
    assert len(envs.PAPER_TASKS) == 6 and set(envs.PAPER_TASKS) < set(envs.FAST_TASKS)
    assert len(envs.FAST_TASKS) == 8
    names = envs.task_names()
    assert set(envs.FAST_TASKS) <= set(names) and "toy-bimodal" in names and "lqr-lqr_2_1" in names
    assert all(envs.canonical_task(n) == n for n in names)
    assert envs.score_range("WalkerWalk") == (0.0, 1000.0)
    assert envs.score_range("toy-bimodal") == (0.0, 16.0)
    with pytest.raises(UserError, match="lqr, whose reward is unbounded below"):
        envs.score_range("lqr-lqr_2_1")
    assert envs.max_episode_steps("hopper-stand") == 1000
    assert envs.max_episode_steps("toy-bimodal-easy") == 16
    assert envs.max_episode_steps("gym:Pendulum-v1") == 200
    text = "\n".join(envs.describe_tasks())
    for task, alias in envs.ALIASES.items():
        assert task in text and alias in text
    assert "gym:<id>" in text and "every dm_control suite task" in text.lower()


# --- API conventions --------------------------------------------------------------------

API_CASES = [
    ("walker-walk", "dm_control"),
    ("walker-walk", "fast"),
    ("toy-bimodal", "auto"),
    ("gym:Pendulum-v1", "auto"),
]


@pytest.mark.parametrize(("task", "backend"), API_CASES)
def test_spaces_dtypes_and_autoreset_mode(task, backend):
    env = envs.make(task, 3, seed=0, backend=backend)
    assert isinstance(env, gymnasium.vector.VectorEnv)
    assert env.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.SAME_STEP
    assert env.single_action_space.low.min() == -1 and env.single_action_space.high.max() == 1
    obs, info = env.reset()
    assert obs.shape == (3, env.single_observation_space.shape[0]) and obs.dtype == np.float32
    assert env.action_space.shape == (3, env.single_action_space.shape[0])
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.dtype == np.float32 and reward.dtype == np.float32 and reward.shape == (3,)
    assert terminated.dtype == bool and truncated.dtype == bool
    env.close()


def test_dmc_observation_order_matches_the_dm_control_dict():
    from dm_control import suite

    env = envs.make("walker-walk", 1, seed=3, backend="dm_control")
    obs, _ = env.reset()
    reference = suite.load("walker", "walk", task_kwargs={"random": 0})
    time_step = reference.reset()
    sizes = [np.asarray(v).size for v in time_step.observation.values()]
    assert obs.shape[1] == sum(sizes) == 24
    # orientations (14), height (1), velocity (9): the height sits at index 14
    physics = env.envs[0].physics
    assert obs[0, 14] == np.float32(physics.named.data.xpos["torso", "z"])
    np.testing.assert_array_equal(obs[0, 15:], physics.data.qvel.astype(np.float32))


# --- seeding ----------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "backend"), API_CASES)
def test_same_seed_same_trajectories(task, backend):
    a, b = (envs.make(task, 2, seed=7, backend=backend) for _ in range(2))
    actions = random_actions(a, 20)
    assert_same_rollouts(rollout(a, actions), rollout(b, actions))
    # reset(seed=None) re-seeds with the construction seed
    obs_a, _ = a.reset()
    obs_b, _ = b.reset(seed=7)
    np.testing.assert_array_equal(obs_a, obs_b)
    # sub-envs differ from each other, and another seed gives other initial states
    assert not np.array_equal(obs_a[0], obs_a[1])
    other, _ = envs.make(task, 2, seed=8, backend=backend).reset()
    assert not np.array_equal(obs_a, other)
    # reset(seed) re-seeds as if built with that seed: every evaluation point's own episodes
    np.testing.assert_array_equal(a.reset(seed=8)[0], other)


def test_dmc_actions_in_minus_one_one_span_each_actuator_s_own_bounds():
    """Quadruped is the suite's domain with other bounds than [-1, 1] (e.g. [-1, 1.1], [-0.8, 0.8]):
    a wrong affine map clamps part of its range in MuJoCo without any error."""

    env = envs.make("quadruped-walk", 1, seed=0, backend="dm_control")
    env.reset()
    spec = env.envs[0].action_spec()
    assert (spec.minimum != -1).any() and (spec.maximum != 1).any()
    for action, control in (
        (-1.0, spec.minimum),
        (1.0, spec.maximum),
        (0.0, (spec.minimum + spec.maximum) / 2),
    ):
        actions = np.full((1, env.act_dim), action, np.float32)
        np.testing.assert_allclose(env.to_control(actions)[0], control, rtol=1e-6)
    env.step(np.full((1, env.act_dim), 0.5, np.float32))
    expected = spec.minimum + 0.75 * (spec.maximum - spec.minimum)
    np.testing.assert_allclose(env.physics[0].data.ctrl, expected, rtol=1e-6)
    env.close()


# --- episodes ---------------------------------------------------------------------------


def test_dmc_episodes_truncate_after_1000_steps_with_final_obs():
    env = envs.make("cartpole-balance", 2, seed=0, backend="dm_control")
    zeros = np.zeros((2, 1), np.float32)
    for _ in range(999):
        obs, _, terminated, truncated, info = env.step(zeros)
        assert not terminated.any() and not truncated.any() and "final_obs" not in info
    last_obs = obs
    obs, _, terminated, truncated, info = env.step(zeros)
    assert truncated.all() and not terminated.any()
    assert info["_final_obs"].all() and info["final_obs"].dtype == np.float32
    # the final obs continues the episode; the returned row is a fresh reset observation
    positions, cart_velocity = slice(0, 3), 3  # cartpole: position (3) then velocity (2)
    assert np.abs(info["final_obs"][:, positions] - last_obs[:, positions]).max() < 0.1
    assert not np.array_equal(obs, info["final_obs"])
    assert np.abs(obs[:, cart_velocity]).max() < 0.1  # a reset starts the cart near rest
    _, _, _, truncated, _ = env.step(zeros)
    assert not truncated.any()


def test_toy_episodes_truncate_with_final_obs_rows():
    env = envs.make("toy-bimodal", 4, seed=0)
    for t in range(1, 33):
        obs, _, terminated, truncated, info = env.step(np.zeros((4, 2)))
        assert not terminated.any()
        assert truncated.all() == (t % 16 == 0) and truncated.any() == (t % 16 == 0)
        if t % 16 == 0:
            assert info["_final_obs"].all()
            np.testing.assert_allclose(np.linalg.norm(info["final_obs"], axis=1), 1, rtol=1e-6)


# --- snapshots --------------------------------------------------------------------------

SNAPSHOT_CASES = [
    ("walker-walk", "dm_control", 0),
    # finger-turn moves its target (a model field) and draws from its RandomState at every reset
    ("finger-turn_hard", "dm_control", 995),
    # fish moves its target geom at every reset; the fast backend shares the snapshot code
    ("fish-swim", "fast", 995),
    ("humanoid-stand", "fast", 3),
    # lqr draws its joint stiffness when it is loaded, from the construction seed
    ("lqr-lqr_2_1", "dm_control", 5),
    # quadruped-escape reads the physics' rendering contexts at every reset (none here)
    ("quadruped-escape", "dm_control", 3),
    ("toy-bimodal", "auto", 10),
    ("gym:Pendulum-v1", "auto", 195),
    # gymnasium's MuJoCo envs pickle as fresh ones: their simulation state is stored beside
    ("gym:Hopper-v5", "auto", 5),
    # Ant's x-velocity reward reads body positions as the previous step left them
    ("gym:Ant-v5", "auto", 5),
]


@pytest.mark.parametrize(("task", "backend", "warmup"), SNAPSHOT_CASES)
def test_snapshot_restores_bit_identically(task, backend, warmup):
    env = envs.make(task, 2, seed=1, backend=backend)
    rollout(env, random_actions(env, warmup, seed=2))
    snapshot = pickle.loads(pickle.dumps(env.get_state()))
    actions = random_actions(env, 12, seed=3)  # crosses an episode end after the warmups above
    expected = rollout(env, actions)
    env.set_state(snapshot)
    assert_same_rollouts(rollout(env, actions), expected)
    # a different env instance (as after a process restart) continues identically too
    fresh = envs.make(task, 2, seed=99, backend=backend)
    fresh.set_state(snapshot)
    assert_same_rollouts(rollout(fresh, actions), expected)


def test_a_gym_snapshot_of_an_earlier_version_still_restores():
    """Snapshots of gymnasium MuJoCo envs held their integration state before whole MjData copies;
    Hopper's rewards read only that state, so such a snapshot continues bit-identically."""

    from envs.physics_state import get_integration_state

    env = envs.make("gym:Hopper-v5", 2, seed=1)
    rollout(env, random_actions(env, 5, seed=2))
    snapshot = env.get_state()
    snapshot["mujoco"] = [
        {
            "integration": get_integration_state(sub.unwrapped.model, sub.unwrapped.data),
            "np_random": state["np_random"],
        }
        for sub, state in zip(env.envs, snapshot["mujoco"], strict=True)
    ]
    snapshot = pickle.loads(pickle.dumps(snapshot))
    actions = random_actions(env, 12, seed=3)
    expected = rollout(env, actions)
    fresh = envs.make("gym:Hopper-v5", 2, seed=99)
    fresh.set_state(snapshot)
    assert_same_rollouts(rollout(fresh, actions), expected)


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "backend"), API_CASES)
def test_bad_actions_raise_and_the_env_keeps_working(task, backend):
    env = envs.make(task, 2, seed=0, backend=backend)
    act_dim = env.single_action_space.shape[0]
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((3, act_dim)))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(2 * act_dim))
    for bad in (np.nan, np.inf, -np.inf):
        actions = np.zeros((2, act_dim))
        actions[1, 0] = bad
        with pytest.raises(ValueError, match=r"NaN or inf \(sub-envs \[1\]\)"):
            env.step(actions)
    obs, *_ = env.step(np.zeros((2, act_dim)))
    assert np.isfinite(obs).all()


def test_an_error_in_the_worker_thread_propagates_and_the_pool_survives():
    env = envs.make("walker-walk", 4, seed=0, backend="fast")
    actions = np.zeros((4, env.act_dim))
    good = env.per_env[0]
    env.per_env[0] = (None, *good[1:])  # no model: sub-env 0 is stepped by the worker thread
    with pytest.raises(TypeError):
        env.step(actions)
    env.per_env[0] = good
    obs, *_ = env.step(actions)
    assert np.isfinite(obs).all()
    env.close()


def test_auto_backend_picks_fast_where_it_exists():
    from envs.dmc import DMCVectorEnv
    from envs.fast import FastVectorEnv

    assert type(envs.make("HopperStand", 1, seed=0)) is FastVectorEnv
    assert type(envs.make("cartpole-balance", 1, seed=0)) is DMCVectorEnv


def test_bad_make_arguments_raise_user_errors():
    with pytest.raises(UserError, match="num_envs"):
        envs.make("walker-walk", 0, seed=0)
    with pytest.raises(UserError, match="num_envs"):
        envs.make("toy-bimodal", -1, seed=0)
    with pytest.raises(UserError, match="Unknown backend 'mjx'.*auto, fast, dm_control"):
        envs.make("walker-walk", 1, seed=0, backend="mjx")
    with pytest.raises(UserError, match="no fast backend.*dm_control"):
        envs.make("ball_in_cup-catch", 1, seed=0, backend="fast")
    with pytest.raises(UserError, match=r"env_backend\) 'auto'\. Fast tasks"):
        envs.make("toy-bimodal", 1, seed=0, backend="fast")  # a toy task has no dm_control backend to offer
    with pytest.raises(UserError, match="not a dm_control task"):
        envs.make("toy-bimodal", 1, seed=0, backend="dm_control")
    with pytest.raises(UserError, match="walker-walk"):
        envs.make("walker-wlak", 1, seed=0)


# --- toy task ---------------------------------------------------------------------------


def episode_return(task: str, policy, episodes: int = 64) -> float:
    env = envs.make(task, episodes, seed=0)
    obs, _ = env.reset()
    total = np.zeros(episodes)
    for _ in range(envs.max_episode_steps(task)):
        obs, reward, _, truncated, _ = env.step(policy(obs))
        total += reward
    assert truncated.all()
    return float(total.mean())


@pytest.mark.parametrize("task", list(toy.TASKS))
def test_toy_mode_picking_beats_averaging_by_the_documented_margin(task):
    spec = toy.TASKS[task]
    low, high = envs.score_range(task)
    picks_plus = episode_return(task, lambda obs: toy.modes(obs, spec)[0])
    picks_minus = episode_return(task, lambda obs: toy.modes(obs, spec)[1])
    averaging = episode_return(task, lambda obs: np.zeros_like(obs))
    assert picks_plus == pytest.approx(high, rel=1e-5) and picks_minus == pytest.approx(high, rel=1e-5)
    assert averaging == pytest.approx(spec.averaging_return, rel=1e-5)
    # the margins the docstring states
    documented = {"toy-bimodal": 0.18, "toy-bimodal-easy": 5.19}[task]
    assert averaging == pytest.approx(documented, abs=0.005) and low == 0.0
    # a bimodal policy (half the envs on each mode) is optimal too
    signs = np.where(np.arange(64) % 2, 1.0, -1.0)[:, None]
    mixed = episode_return(task, lambda obs: toy.modes(obs, spec)[0] * signs)
    assert mixed == pytest.approx(high, rel=1e-5)


def test_toy_is_fast():
    import time

    env = envs.make("toy-bimodal", 256, seed=0)
    actions = np.zeros((256, 2))
    start = time.perf_counter()
    for _ in range(16 * 8):
        env.step(actions)
    episodes_per_second = 256 * 8 / (time.perf_counter() - start)
    assert episodes_per_second > 2000, episodes_per_second


# --- gym ids ----------------------------------------------------------------------------


def test_gym_actions_are_rescaled_to_the_env_bounds():
    env = envs.make("gym:Pendulum-v1", 1, seed=5)
    obs, _ = env.reset()
    raw = gymnasium.make("Pendulum-v1")
    seed = int(np.random.SeedSequence(5).spawn(1)[0].generate_state(1)[0])
    raw_obs, _ = raw.reset(seed=seed)
    np.testing.assert_array_equal(obs[0], raw_obs)
    for a in (1.0, -0.5, 0.25):  # Pendulum's torque bounds are [-2, 2]
        obs, reward, *_ = env.step(np.array([[a]]))
        raw_obs, raw_reward, *_ = raw.step(np.array([2 * a], np.float32))
        np.testing.assert_array_equal(obs[0], raw_obs)
        assert reward[0] == np.float32(raw_reward)


def test_a_gym_env_that_terminates_starts_its_next_episode_in_the_same_step():
    """No test reached a termination: a sub-env left unreset after Hopper falls would step a
    fallen body and report `terminated` on every later step."""

    env = envs.make("gym:Hopper-v5", 2, seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(500):  # random torques topple Hopper within tens of steps
        obs, _, terminated, truncated, info = env.step(rng.uniform(-1, 1, (2, 3)))
        if terminated.any():
            break
    assert terminated.any() and not truncated.any()
    row = int(np.flatnonzero(terminated)[0])
    assert info["_final_obs"][row] and not np.array_equal(info["final_obs"][row], obs[row])
    # The fallen body's obs is in final_obs; the returned obs is a fresh start (Hopper resets its
    # torso to height 1.25 with +-0.005 noise) that is not terminated on its next step.
    assert info["final_obs"][row][0] < 0.7 or abs(info["final_obs"][row][1]) > 0.2  # unhealthy
    assert obs[row][0] == pytest.approx(1.25, abs=0.01)
    _, _, terminated, *_ = env.step(np.zeros((2, 3)))
    assert not terminated[row]
    env.close()


@pytest.mark.parametrize("backend", ["fast", "dm_control"])
def test_mujoco_out_of_memory_is_a_memory_error_naming_the_envs(backend):
    """MuJoCo reports a failed allocation as a ValueError ("engine error"), which reached the
    command line as a traceback; as a MemoryError the CLI prints one line."""

    script = textwrap.dedent(f"""
        import resource
        import envs

        with open("/proc/self/status") as status:
            used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
        limit = used + 512 * 2**20  # room for a few dozen envs, not for a hundred thousand
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            envs.make("walker-walk", 100_000, 0, backend="{backend}")
        except MemoryError as error:
            print(f"MemoryError: {{error}}")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    expected = "MemoryError: MuJoCo could not allocate 100000 envs of walker-walk"
    assert done.stdout.strip() == expected, done.stderr
