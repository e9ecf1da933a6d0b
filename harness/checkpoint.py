"""One checkpoint file per run directory, replaced atomically so a crash never leaves a torn file.

The file is replaced as `harness.atomic` replaces files (a temporary file, fsync, rename): a
run killed at any moment leaves either the previous checkpoint or the new one, never a partial
file.

A training process holds an exclusive lock on its run directory (`hold_run_directory`), so a
second run or resume in the same directory is refused instead of overwriting the first one's
checkpoints and logging its metrics twice. The kernel drops the lock when the process dies,
so a run killed with SIGKILL can be resumed at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from harness.atomic import write_atomically
from harness.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"
TMP_PREFIX = ".checkpoint-"  # a checkpoint being written; left behind only by a killed process
LOCK_NAME = ".lock"
#: What every run checkpoint holds: the `RunRequest`, the agent's state, the run's position
#: (`harness.run._RunPosition`: evaluations so far, next point and checkpoint) and its MLflow run.
RUN_KEYS = {"request", "agent", "progress", "mlflow_run_id"}


def checkpoint_path(out_dir: Path) -> Path:
    return Path(out_dir) / CHECKPOINT_NAME


def save_checkpoint(out_dir: Path, payload: dict[str, Any]) -> Path:
    """Write `payload` (anything torch.save can pickle) to `out_dir/checkpoint.pt` atomically."""

    out_dir = Path(out_dir)
    target = checkpoint_path(out_dir)
    # Serialised in memory first: torch's writer reports a full disk as an opaque "unexpected
    # pos" error, a plain file write as ENOSPC.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(target, buffer.getbuffer(), TMP_PREFIX)
    except OSError as error:
        kept = "the previous checkpoint is kept" if target.exists() else "no checkpoint was written"
        raise UserError(f"cannot write the checkpoint in {out_dir}: {error.strerror}; {kept}.") from None
    return target


def load_checkpoint(out_dir: Path) -> dict[str, Any]:
    """The payload saved in `out_dir`; a clear error when there is none or it cannot be read."""

    require_checkpoint(out_dir)
    path = checkpoint_path(out_dir)
    _check_integrity(path)
    try:
        # Our own files: they hold numpy arrays and env snapshots, which weights_only refuses.
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - torch.load fails in many ways on a damaged file
        raise UserError(
            f"{path} cannot be read ({type(error).__name__}: {error}); it is damaged or not a checkpoint."
        ) from None
    if not isinstance(payload, dict) or not payload.keys() >= RUN_KEYS:
        raise UserError(f"{path} is not a gorl-bench run checkpoint.")
    return payload


def _check_integrity(path: Path) -> None:
    """Refuse a checkpoint whose bytes changed since it was written (a disk or copy error): torch
    saves a zip archive but does not check its checksums when loading, so a flipped bit in the
    weights loaded silently, and a resume then "diverged"."""

    if not zipfile.is_zipfile(path):
        return  # not torch's zip format: torch.load says what it is
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise UserError(
            f"{path} is damaged ({type(error).__name__}: {error}); it is not the checkpoint that was saved."
        ) from None
    if bad is not None:
        raise UserError(
            f"{path} is damaged: {bad} fails its checksum; it is not the checkpoint that was saved."
        )


def require_checkpoint(out_dir: Path) -> None:
    """A clear error unless `out_dir` is a run directory with a checkpoint file."""

    out_dir = Path(out_dir)
    if checkpoint_path(out_dir).is_file():
        return
    if not out_dir.exists():
        where = "the directory does not exist"
    elif not out_dir.is_dir():
        where = "it is a file, not a run directory"
    else:
        where = f"the directory has no {CHECKPOINT_NAME} file"
        # A folder of runs (a study's variant folder, `runs/`) given for one of them.
        inside = sorted(path.parent.name for path in out_dir.glob(f"*/{CHECKPOINT_NAME}"))
        if inside:
            shown = ", ".join(inside[:3]) + (f" and {len(inside) - 3} more" if len(inside) > 3 else "")
            runs = f"{len(inside)} run director{'y' if len(inside) == 1 else 'ies'}"
            where += f", but {runs} inside it hold one ({shown})"
    raise UserError(
        f"{str(out_dir)!r} holds no run checkpoint: {where}. Pass the --out directory of a run that "
        f"wrote at least one checkpoint (a run writes one when it starts training)."
    )


@contextlib.contextmanager
def hold_run_directory(out_dir: Path) -> Iterator[None]:
    """Create `out_dir` if needed and hold its lock while the block runs; a clear error when
    another process holds it or the directory cannot be used."""

    fd = _lock_run_directory(Path(out_dir))
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        # Half-written checkpoints of a process killed while saving: nobody else writes here now.
        for leftover in Path(out_dir).glob(f"{TMP_PREFIX}*.tmp"):
            leftover.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_run_directory(out_dir: Path) -> int:
    """The descriptor of `out_dir`'s lock file, locked by this process."""

    lock_path = out_dir / LOCK_NAME
    while True:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise UserError(f"cannot use {str(out_dir)!r} as a run directory: {error.strerror}.") from None
        if not os.access(out_dir, os.W_OK | os.X_OK):  # checkpoints could not be written: say so now
            os.close(fd)
            raise UserError(f"cannot use {str(out_dir)!r} as a run directory: it is not writable.")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"{str(out_dir)!r} is in use by a run that is still training (process {holder}); wait for "
                f"it to finish, or stop it first."
            ) from None
        # The holder may have moved the directory aside (a study's stale run) between our open and
        # our lock: then we hold the moved directory's lock, and must lock the new one instead.
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock_path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
