"""Shared fixtures: a migrated MLflow store made once per session and copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema created (creating one costs ~1.4 s of migrations)."""

    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def interrupts_end_with_their_test():
    """A command run in-process installs its handlers for SIGINT and SIGTERM and remembers an
    interrupt for the rest of the command (`harness.signals`): a later test in the same process
    (pytest-xdist runs them in any order) must not inherit either, or it stops at once."""

    import signal

    from harness.signals import forget_interrupts

    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    forget_interrupts()
    for signum, handler in handlers.items():
        if handler is not None:
            signal.signal(signum, handler)


@pytest.fixture
def slow_work(monkeypatch):
    """Progress lines in a log due every 0.2 s (every minute in use), checked every 0.05 s; returns
    `slow(cls, name)`, which makes the method `cls.name` take 0.6 s more: work that outlasts the
    interval between lines, as a `paper` preset's update or refit does."""

    import time

    import harness.progress

    monkeypatch.setattr(harness.progress, "PLAIN_INTERVAL_S", 0.2)
    monkeypatch.setattr(harness.progress, "FIRST_PLAIN_LINE_S", 0.2)
    monkeypatch.setattr(harness.progress, "HEARTBEAT_POLL_S", 0.05)

    def slow(cls: type, name: str) -> None:
        original = getattr(cls, name)

        def slower(self, *args, **kwargs):
            time.sleep(0.6)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, slower)

    return slow


@pytest.fixture
def tracking_uri(tmp_path, migrated_mlflow_db) -> str:
    """A fresh copy of the migrated store for one test."""

    path = tmp_path / "mlflow.db"
    shutil.copy(migrated_mlflow_db, path)
    return f"sqlite:///{path}"


def assert_same_state(got, expected, path: str = "state") -> None:
    """Two nested state dicts (dicts, lists, tensors, arrays, scalars, bytes) hold equal values."""

    import numpy as np
    import torch

    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), path
        for key in expected:
            assert_same_state(got[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert_same_state(g, e, f"{path}[{i}]")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(got, expected), path
    elif isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(got, expected, err_msg=path)
    else:
        assert got == expected, path


@pytest.fixture
def learns_easy_toy():
    """A check that an agent on `toy-bimodal-easy` learns and that its state round-trips.

    `check(agent, make_clone, updates)` trains `updates` iterations and asserts the stated
    threshold: the greedy return on 16 evaluation episodes closes at least half the gap between
    the untrained return and the best possible one (the evaluation's own noise is ~0.4 at these
    returns). It then loads the agent's state into `make_clone()` (a differently seeded agent)
    and asserts identical actions. Returns (last metrics, clone, the observations used).
    """

    import numpy as np

    import envs
    from harness.evaluation import Evaluator

    def greedy_return(agent) -> float:
        evaluator = Evaluator("toy-bimodal-easy", 16, run_seed=0)
        agent.begin_evaluation()
        try:
            return evaluator.evaluate(lambda obs: agent.act(obs, deterministic=True), point=0)[0]
        finally:
            evaluator.close()

    def check(agent, make_clone, updates: int):
        obs = agent.obs.copy()
        before = greedy_return(agent)
        for _ in range(updates):
            metrics = agent.train_iteration()
        after = greedy_return(agent)
        best = envs.score_range("toy-bimodal-easy")[1]
        assert after > before + 0.5 * (best - before), (before, after, best)
        clone = make_clone()
        clone.load_state_dict(agent.state_dict())
        # All of it, not only what acting reads: an episode tracker left out of the load made
        # every resumed run log a dip in its training returns.
        assert_same_state(clone.state_dict(), agent.state_dict())
        clone.begin_evaluation(), agent.begin_evaluation()
        np.testing.assert_array_equal(clone.act(obs), agent.act(obs))
        return metrics, clone, obs

    return check


@pytest.fixture
def as_if_trained_on_cuda():
    """Rewrite a run directory's checkpoint as a GPU machine writes it: its request's device is
    "cuda" (the weights and generator states are device-free once saved)."""

    import torch

    from harness.checkpoint import checkpoint_path

    def rewrite(run_dir: Path) -> None:
        path = checkpoint_path(run_dir)
        saved = torch.load(path, weights_only=False)
        saved["request"]["device"] = "cuda"
        torch.save(saved, path)
        config = run_dir / "config.toml"
        config.write_text(config.read_text().replace('device = "cpu"', 'device = "cuda"'))

    return rewrite


@pytest.fixture
def calls_to(monkeypatch):
    """`calls_to(cls, "method")`: a list that grows by one at every call of `cls.method` in this
    process during the test, e.g. to tell a resume that continues from its checkpoint from one
    that trains again from the start (both end with the same numbers)."""

    def spy(cls: type, name: str) -> list[str]:
        original, calls = getattr(cls, name), []

        def counted(self, *args, **kwargs):
            calls.append(name)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, counted)
        return calls

    return spy
