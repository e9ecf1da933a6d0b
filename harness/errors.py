"""The one exception type that reaches users as a message instead of a traceback, and the short
description of any other error that a run's or a study's record keeps."""

from __future__ import annotations

import re


class UserError(Exception):
    """Bad input from the user: a wrong name, value or file.

    The CLI prints the message as one paragraph and exits with status 2, so the message
    must say what was wrong and what the valid choices are.
    """


def first_line(error: object, empty: str = "no reason given") -> str:
    """The first line of an error's message, for a one-line report. A database driver's error
    wrapped by SQLAlchemy (`error.orig`) speaks for itself; an empty message reads as `empty`."""

    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else empty


def out_of_memory(error: BaseException) -> str | None:
    """What failed to allocate, when `error` is running out of memory: a MemoryError (Python, numpy,
    and any allocation under a limit such as `ulimit -v`) or torch's RuntimeError (its CPU
    allocator's "can't allocate memory", CUDA's "out of memory"); None for any other error."""

    text = first_line(error, empty="")
    if isinstance(error, MemoryError):
        return text or "an allocation failed"
    if not isinstance(error, RuntimeError):
        return None
    if "can't allocate memory" in text:  # torch's CPU allocator: "... you tried to allocate N bytes ..."
        size = re.search(r"tried to allocate (\d+) bytes", text)
        return f"torch could not allocate {int(size[1]) / 2**30:,.2f} GiB" if size else text
    if "out of memory" in text:  # CUDA's: "CUDA out of memory. Tried to allocate 20.00 GiB ..."
        return text
    return None


def describe(error: BaseException) -> str:
    """One line for a failed run's record: "out of memory (...)" when it ran out, else the type
    and the message."""

    detail = out_of_memory(error)
    return f"out of memory ({detail})" if detail is not None else f"{type(error).__name__}: {error}"
