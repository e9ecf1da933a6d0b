"""The tiny PPO settings of the study and demo tests, as TOML lines for a spec's table."""

# Updates of 8 envs x 32 steps, 2 short evaluations, one thread (two workers share two cores).
TINY_PPO = """
num_envs = 8
rollout_steps = 32
epochs = 2
num_minibatches = 2
eval_points = 2
eval_episodes = 2
actor_hidden = [16]
critic_hidden = [16]
collect_threads = 1
update_threads = 1
"""
