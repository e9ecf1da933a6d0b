"""Argument types shared by the sub-commands.

A value that can never work (a count of zero, a negative seed) is refused by argparse while
the command line is parsed, before anything is loaded, trained or timed, with the usual
`gorl-bench COMMAND: error: argument --NAME: ...` line and exit status 2.
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse `type` of a count that must be at least 1 (iterations, steps, repeats, resamples)."""

    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse `type` of a value that must be 0 or more (a seed: numpy refuses negative ones)."""

    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
