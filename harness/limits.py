"""Upper bounds on counts that users set, shared by the commands that take them and the run's checks."""

# Episodes of one evaluation (a run's eval_episodes, `evaluate --episodes`). A million put the mean
# return within 0.1% of its std; every return is kept (and written by `evaluate --json`), so a
# larger count is a slip that would fill memory after days of play.
MAX_EPISODES = 1_000_000
