"""Upper bounds on counts that users set, shared by the commands that take them and the run's checks."""

from harness.errors import UserError

# Episodes of one evaluation (a run's eval_episodes, `evaluate --episodes`). A million put the mean
# return within 0.1% of its std; every return is kept (and written by `evaluate --json`), so a
# larger count is a slip that would fill memory after days of play.
MAX_EPISODES = 1_000_000

# Evaluation points of a run (a config's eval_points): the paper evaluates 30 times. Each point plays
# eval_episodes episodes, so more than this is a slip, and the list of points would fill memory
# before the run could refuse it (a billion: 5 GB).
MAX_EVAL_POINTS = 100_000

# torch's intra-op threads (a config's collect_threads and update_threads, `study worker --threads`):
# as many as the largest CPUs have cores. More only add overhead, and torch starts them all:
# 20,000 stalled a run and 100,000 crashed the process.
MAX_THREADS = 256


# Run seeds: torch and numpy take 64-bit seeds, and a run derives seed + k from its own.
SEED_BOUND = 2**32


def check_steps_and_seed(steps: int, seed: int, steps_name: str, seed_name: str) -> None:
    """A run's budget and seed, named as the user gave them (`--steps`, or a config file's key)."""

    if steps < 1:
        raise UserError(f"{steps_name} must be a positive number of env steps, got {steps}.")
    if not 0 <= seed < SEED_BOUND:
        raise UserError(f"{seed_name} must be an integer from 0 to 2**32 - 1, got {seed}.")
