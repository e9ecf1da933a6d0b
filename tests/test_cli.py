"""The command line reads the same everywhere: every command's --help starts with what it does."""

from __future__ import annotations

import argparse

from harness.cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every command and subcommand under `parser`."""

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def test_every_command_s_help_says_what_it_does():
    """`list --help`, `bench --help`, `study run --help` and others showed usage and options alone."""

    commands = dict(_commands(build_parser()))
    assert {("list",), ("bench", "envs"), ("study", "run"), ("diagnose", "multimodality")} <= set(commands)
    undescribed = [" ".join(words) for words, parser in commands.items() if not parser.description]
    assert undescribed == []


def test_every_set_option_says_it_can_be_repeated():
    """`run --help` said "(repeatable)" for --set; `config` and `bench` did not, yet take it as often."""

    helps = {
        " ".join(words): action.help
        for words, parser in _commands(build_parser())
        for action in parser._actions
        if "--set" in action.option_strings
    }
    assert {"run", "config", "bench train", "bench gorl"} <= set(helps)
    assert all(text.endswith("(repeatable)") for text in helps.values()), helps
