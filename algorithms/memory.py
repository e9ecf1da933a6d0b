"""Refusing, before a run starts, a buffer that cannot fit in this machine's memory.

The sizes are lower bounds (the arrays a buffer must hold, not its overheads or copies), so a
configuration is refused only when it cannot fit: a slip such as `rollout_steps=1e9`, which
otherwise grows for minutes until the kernel's out-of-memory killer ends the run without a word.
"""

from __future__ import annotations

import os


def physical_memory() -> int | None:
    """This machine's memory in bytes; None where the system does not say."""

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(need: int, what: str, fix: str) -> None:
    """Raise ValueError when `need` bytes (a lower bound of what `what` holds) exceed the memory."""

    have = physical_memory()
    if have is not None and need > have:
        raise ValueError(
            f"{what} hold at least {need / 2**30:,.1f} GiB, more than this machine's "
            f"{have / 2**30:,.1f} GiB of memory; {fix}"
        )
