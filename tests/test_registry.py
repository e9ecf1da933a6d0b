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
