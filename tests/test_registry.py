"""What every registered algorithm shares: each config default names its source."""

from __future__ import annotations

import pytest

import algorithms
from algorithms.config import field_notes


@pytest.mark.parametrize("name", algorithms.names())
def test_every_default_names_its_source(name):
    """A comment on a field's line, or just above it, in the class that sets the default."""

    notes = field_notes(algorithms.get(name).config_cls)
    assert len(notes) > 20
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
