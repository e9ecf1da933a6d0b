"""What every registered algorithm shares: each config default names its source."""

from __future__ import annotations

import pytest

import algorithms
from algorithms.config import field_notes


@pytest.mark.parametrize("name", algorithms.names())
def test_every_default_names_its_source(name):
    """A comment on a field's line, or just above it, in the class that sets the default."""

    import dataclasses

    config_cls = algorithms.get(name).config_cls
    notes = field_notes(config_cls)
    assert set(notes) == {field.name for field in dataclasses.fields(config_cls)}
    assert [key for key, note in notes.items() if not note] == []


def test_a_config_without_the_keys_the_harness_reads_is_refused_at_registration():
    import dataclasses

    from algorithms.registry import register

    @dataclasses.dataclass(frozen=True)
    class Incomplete:
        lr: float = 3e-4

    with pytest.raises(TypeError, match=r"the run harness reads: \['env_backend', 'eval_episodes'"):
        register("incomplete", config=Incomplete, presets={"cpu": {}}, summary="")


@pytest.mark.parametrize("name", algorithms.names())
def test_initial_weights_do_not_depend_on_the_process_s_thread_count(name):
    """A plain run takes every core, a study's worker its share: orthogonal initialisation drew
    different weights (by 1e-7) on one thread than on two, and the runs then differed."""

    import torch

    from algorithms.config import resolve

    entry = algorithms.get(name)
    config = resolve(entry, "cpu", "toy-bimodal", {"num_envs": 2})
    previous = torch.get_num_threads()
    weights = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            agent = entry.agent_cls(config, "toy-bimodal", 0, 10**6, torch.device("cpu"))
            if hasattr(agent, "begin_stage"):  # GoRL draws a new encoder at a stage boundary
                agent.begin_stage(1)
            weights.append({key: value.clone() for key, value in agent.model.state_dict().items()})
            agent.close()
    finally:
        torch.set_num_threads(previous)
    one, two = weights
    assert [key for key in one if not torch.equal(one[key], two[key])] == []


def test_an_agent_class_missing_a_method_or_a_cpu_preset_is_refused_at_registration():
    """Found at `gorl-bench run`, after the run's directory and MLflow run were made."""

    import dataclasses

    from algorithms.base import Agent
    from algorithms.registry import register

    @dataclasses.dataclass(frozen=True)
    class Config:
        eval_points: int = 1
        eval_episodes: int = 1
        env_backend: str = "auto"

    class WithoutAct(Agent):
        def __init__(self, config, task, seed, budget, device): ...
        def train_iteration(self): ...
        def state_dict(self): ...
        def load_state_dict(self, state): ...

    with pytest.raises(TypeError, match="agent class of 'no-act' does not implement act"):
        register("no-act", config=Config, presets={"cpu": {}}, summary="")(WithoutAct)
    with pytest.raises(TypeError, match="presets of 'paper-only' lack 'cpu'"):
        register("paper-only", config=Config, presets={"paper": {}}, summary="")
    assert "no-act" not in algorithms.names()


def test_a_task_override_of_an_unknown_key_is_named():
    """A slip in an algorithm's task_overrides was a bare KeyError, on that task only."""

    from algorithms.config import resolve
    from algorithms.registry import AlgorithmSpec
    from harness.errors import UserError

    ppo = algorithms.get("ppo")
    slipped = AlgorithmSpec(**{**vars(ppo), "task_overrides": lambda preset, task: {"gama": 0.95}})
    with pytest.raises(
        UserError, match="task overrides of ppo for cheetah-run set unknown config keys: 'gama'"
    ):
        resolve(slipped, "cpu", "cheetah-run", {})


def test_a_parameter_outside_actor_and_critic_is_clipped_too():
    """Per-network clipping took the actor's and critic's parameters only: a subclass's free
    log-std was optimised but never clipped."""

    import torch

    from algorithms.config import resolve

    entry = algorithms.get("ppo")
    config = resolve(entry, "cpu", "toy-bimodal", {"num_envs": 2})
    assert config.grad_norm_scope == "per_network"
    agent = entry.agent_cls(config, "toy-bimodal", 0, 10**6, torch.device("cpu"))
    assert len(agent.clip_groups()) == 2  # the built-in models: actor and critic only
    agent.model.log_std = torch.nn.Parameter(torch.zeros(2))
    groups = agent.clip_groups()
    assert len(groups) == 3 and groups[2] == [agent.model.log_std]
    agent.close()


def test_an_unknown_name_in_the_wrong_case_is_offered_in_the_right_one():
    from harness.errors import UserError

    with pytest.raises(UserError, match=r"unknown algorithm 'PPO'\. Did you mean ppo\?"):
        algorithms.get("PPO")
