"""Refusing, before a run starts, a buffer that cannot fit in this machine's memory.

The sizes are lower bounds (the arrays a buffer must hold, not its overheads or copies), so a
configuration is refused only when it cannot fit: a slip such as `rollout_steps=1e9`, which
otherwise grows for minutes until the kernel's out-of-memory killer ends the run without a word.
What lives on the learner's device is compared with the largest memory here, host or GPU,
since the device is chosen after the configuration is checked.
"""

from __future__ import annotations

import math
import os

import torch


def host_memory() -> int | None:
    """This machine's memory in bytes; None where the system does not say."""

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def largest_memory() -> int | None:
    """The most memory one device here has: the host's, or a larger GPU's."""

    sizes = [host_memory() or 0]
    if torch.cuda.is_available():
        sizes += [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    return max(sizes) or None


def mlp_parameters(inputs: int, hidden: tuple[int, ...], outputs: int) -> int:
    """Weights and biases of a fully connected network, counted without building it."""

    sizes = [inputs, *hidden, outputs]
    return sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(sizes, sizes[1:], strict=False))


def check_network_fits(parameters: int, what: str, keys: str) -> None:
    """Raise ValueError when a network of `parameters` weights (`what`, sized by the config `keys`)
    cannot train in any device's memory here: its weights, gradients and Adam's two moments are
    four float32 copies."""

    check_fits(16 * parameters, f"{what}'s {parameters:,} weights with their gradients and Adam's moments",
               f"lower {keys}", on_device=True)  # fmt: skip


def check_fits(need: int, what: str, fix: str, on_device: bool = False) -> None:
    """Raise ValueError when `need` bytes (a lower bound of what `what` holds) exceed the host's
    memory, or with `on_device` (arrays on the learner's device) the largest memory here."""

    have = largest_memory() if on_device else host_memory()
    if have is not None and need > have:
        where = "any device's memory here" if on_device else "this machine's memory"
        raise ValueError(f"{what} hold at least {_gib(need)}, more than {where} ({_gib(have)}); {fix}")


def _gib(size: int) -> str:
    """`size` bytes in GiB, also a size no float holds (a count of 10^400 passed as a setting)."""

    gib = size // 2**30
    if gib < 10**15:
        return f"{size / 2**30:,.1f} GiB"
    # Not from str(gib), which refuses integers of more than 4,300 digits.
    return f"about 10^{math.floor(math.log10(gib))} GiB"
