"""What every registered algorithm shares: each config default names its source."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import algorithms


def config_classes() -> list[type]:
    """The registered config classes and the dataclasses they inherit fields from, each once."""

    classes: dict[type, None] = {}
    for name in algorithms.names():
        for cls in algorithms.get(name).config_cls.__mro__:
            if dataclasses.is_dataclass(cls) and cls.__module__.startswith("algorithms."):
                classes[cls] = None
    return list(classes)


@pytest.mark.parametrize("cls", config_classes(), ids=lambda cls: cls.__name__)
def test_every_default_names_its_source(cls):
    """A comment on a field's line or on the line above it says where the default comes from."""

    lines = inspect.getsource(cls).splitlines()
    assert cls.__annotations__, cls
    for name in cls.__annotations__:
        index = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{name}:"))
        assert "#" in lines[index] or lines[index - 1].strip().startswith("#"), (cls.__name__, name)
