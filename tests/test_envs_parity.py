"""The fast backend reproduces dm_control: same observations, rewards and episode ends, step by step.

For every fast task, both backends get the same (task, num_envs, seed) and the same seeded
random actions for 1100 steps, i.e. across the episode end at step 1000, where the final
observations and the next episode's reset observations must agree too.
"""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

import envs

STEPS = 1100  # crosses the 1000-step truncation
NUM_ENVS = 2


@pytest.mark.parametrize("task", envs.FAST_TASKS)
def test_fast_backend_matches_dm_control(task):
    fast = envs.make(task, NUM_ENVS, seed=11, backend="fast")
    reference = envs.make(task, NUM_ENVS, seed=11, backend="dm_control")
    assert type(fast) is not type(reference)
    assert fast.single_observation_space == reference.single_observation_space
    assert fast.single_action_space == reference.single_action_space
    obs, _ = fast.reset()
    expected, _ = reference.reset()
    np.testing.assert_array_equal(obs, expected)

    rng = np.random.default_rng(0)
    rewards, episode_ends = [], 0
    for t in range(STEPS):
        actions = rng.uniform(-1, 1, (NUM_ENVS, fast.act_dim)).astype(np.float32)
        obs, reward, terminated, truncated, info = fast.step(actions)
        ref_obs, ref_reward, ref_terminated, ref_truncated, ref_info = reference.step(actions)
        np.testing.assert_array_equal(obs, ref_obs, err_msg=f"{task} obs, step {t}")
        np.testing.assert_array_equal(reward, ref_reward, err_msg=f"{task} reward, step {t}")
        np.testing.assert_array_equal(terminated, ref_terminated)
        np.testing.assert_array_equal(truncated, ref_truncated)
        assert info.keys() == ref_info.keys()
        if truncated.any():
            episode_ends += truncated.sum()
            np.testing.assert_array_equal(info["_final_obs"], ref_info["_final_obs"])
            np.testing.assert_array_equal(info["final_obs"], ref_info["final_obs"])
        rewards.append(ref_reward)
    assert episode_ends == NUM_ENVS  # every sub-env ended exactly once, at step 1000
    if task not in SPARSE_UNDER_RANDOM_ACTIONS:  # those are covered by the test below
        assert np.ptp(np.array(rewards)) > 0.01
    fast.close()


@pytest.mark.parametrize("backend", ["dm_control", "fast"])
def test_a_diverged_simulation_stops_the_step_on_either_backend(backend):
    """dm_control raises `PhysicsError` on MuJoCo's warnings; MuJoCo itself resets the simulation
    and steps on, so the fast backend carried on from its default pose, inside the episode."""

    from envs.dmc import SimulationDiverged

    env = envs.make("walker-walk", NUM_ENVS, seed=0, backend=backend)
    env.reset()
    env.step(np.zeros((NUM_ENVS, env.act_dim)))
    env.physics[1].data.qvel[:] = np.nan  # as an unstable integration leaves it
    with pytest.raises(SimulationDiverged, match=r"walker-walk diverged in sub-env 1 at step 2 .*BADQ"):
        env.step(np.zeros((NUM_ENVS, env.act_dim)))
    assert issubclass(SimulationDiverged, FloatingPointError)  # the run stops as diverged
    env.close()


# Random actions earn these tasks' rewards rarely or never (a fallen hopper, a finger that does not
# spin, a target that finger-turn_hard reaches by chance in some episodes but not in this test's).
SPARSE_UNDER_RANDOM_ACTIONS = ("hopper-stand", "finger-spin", "finger-turn_hard")


@pytest.mark.parametrize("task", envs.FAST_TASKS)
def test_fast_observation_and_reward_functions_on_scattered_states(task):
    """Compare the batched functions with dm_control's own on states spread around the reset pose.

    The states include rewarding ones for every task: the upright initial pose (hopper, walker,
    humanoid standing), fast hinge spins (finger-spin) and hinge angles all around the circle
    (finger-turn's tip inside the target), and fish mouths next to their target.
    """

    num = 256
    env = envs.make(task, 1, seed=3, backend="fast")
    dm_env, fast_task = env.envs[0], env.fast_task
    physics = dm_env.physics
    model, data = physics.model.ptr, physics.data.ptr
    rng = np.random.default_rng(5)
    ctrl = rng.uniform(-1, 1, (num, env.act_dim))
    raw = np.zeros((num, fast_task.layout.width))
    expected_rewards, expected_obs = np.zeros(num), np.zeros((num, env.obs_dim))
    for i in range(num):
        data.qpos[:] = model.qpos0 + (0.0, 0.1, 0.3, 1.0)[i % 4] * rng.standard_normal(model.nq)
        data.qvel[:] = rng.standard_normal(model.nv) * (1 + 20 * (i % 3 == 0))
        if task.startswith("finger"):
            data.qpos[2] = rng.uniform(-np.pi, np.pi)  # the hinge
        data.ctrl[:] = ctrl[i]
        mujoco.mj_forward(model, data)
        if task == "fish-swim" and i % 2:  # move the target (a world geom) next to the mouth
            model.geom("target").pos = data.geom("mouth").xpos + 0.02 * rng.standard_normal(3)
            mujoco.mj_forward(model, data)
        raw[i] = np.concatenate([getattr(data, f).ravel() for f in fast_task.layout.fields])
        expected_rewards[i] = dm_env.task.get_reward(physics)
        expected_obs[i] = np.concatenate([np.ravel(v) for v in dm_env.task.get_observation(physics).values()])
    # Not exactly equal in float64: egocentric vectors and distances are batched einsums and norms,
    # which round differently from dm_control's per-row products in the last bits (`envs.fast`).
    np.testing.assert_allclose(fast_task.reward(raw, ctrl), expected_rewards, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast_task.observe(raw), expected_obs, rtol=0, atol=1e-12)
    assert expected_rewards.max() > 0.5, expected_rewards  # rewarding states were among them
    assert np.unique(expected_rewards).size > 1


@pytest.mark.parametrize("task", envs.FAST_TASKS)
def test_small_skybox_changes_no_physics(task):
    """Sub-envs load 1 x 6 skyboxes to save memory; simulation must not notice (textures are drawn only)."""

    from envs.dmc import load

    seed = np.random.SeedSequence(3)
    small, full = load(task, seed), load(task, seed, small_skybox=False)
    assert small.physics.model.ptr.nbuffer < full.physics.model.ptr.nbuffer / 10
    rng = np.random.default_rng(0)
    for _ in range(2):  # two episodes: the reset draws the same from both
        first, reference = small.reset(), full.reset()
        for key in reference.observation:
            np.testing.assert_array_equal(first.observation[key], reference.observation[key])
        for _ in range(300):
            action = rng.uniform(-1, 1, small.action_spec().shape)
            step, ref_step = small.step(action), full.step(action)
            assert step.reward == ref_step.reward
        np.testing.assert_array_equal(small.physics.data.qpos, full.physics.data.qpos)
        np.testing.assert_array_equal(small.physics.data.qvel, full.physics.data.qvel)


def test_loads_on_several_threads_get_the_skybox_each_asked_for():
    """The small-skybox patch is global while one env loads; concurrent loads must not see another's."""

    from concurrent.futures import ThreadPoolExecutor

    from envs.dmc import load

    def model_bytes(small: bool) -> int:
        env = load("walker-walk", np.random.SeedSequence(0), small_skybox=small)
        return env.physics.model.ptr.nbuffer

    wanted = [True, False] * 6
    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(model_bytes, wanted))
    small = {size for size, flag in zip(sizes, wanted, strict=True) if flag}
    full = {size for size, flag in zip(sizes, wanted, strict=True) if not flag}
    assert len(small) == len(full) == 1 and small.pop() < full.pop() / 10, sizes
