"""One checkpoint file per run directory, replaced atomically so a crash never leaves a torn file.

The file is written to a temporary name in the same directory, flushed to disk with fsync,
then renamed over the old checkpoint with `os.replace` (atomic on POSIX), and the directory
entry is synced too. A run killed at any moment therefore leaves either the previous
checkpoint or the new one, never a partial file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from harness.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"


def checkpoint_path(out_dir: Path) -> Path:
    return Path(out_dir) / CHECKPOINT_NAME


def save_checkpoint(out_dir: Path, payload: dict[str, Any]) -> Path:
    """Write `payload` (anything torch.save can pickle) to `out_dir/checkpoint.pt` atomically."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = checkpoint_path(out_dir)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(out_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def load_checkpoint(out_dir: Path) -> dict[str, Any]:
    """The payload saved in `out_dir`; a clear error when there is none."""

    path = checkpoint_path(out_dir)
    if not path.is_file():
        where = "does not exist" if not Path(out_dir).exists() else f"has no {CHECKPOINT_NAME}"
        raise UserError(
            f"cannot resume from {str(out_dir)!r}: the directory {where}. Pass the --out directory of "
            f"a run that wrote at least one checkpoint (one is written at every evaluation point)."
        )
    # Our own files: they hold numpy arrays and env snapshots, which weights_only refuses.
    return torch.load(path, map_location="cpu", weights_only=False)
