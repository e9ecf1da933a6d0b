"""Replacing a file so that a crash, a kill or a full disk never leaves a torn one.

The data goes to a temporary name in the target's directory, is flushed to disk with fsync,
and is renamed over the target with `os.replace` (atomic on POSIX); then the directory entry is
synced too. Whatever stops the write leaves either the previous file or the new one. Renamed
before its data reaches the disk, a file can read back empty after a power loss on common
filesystems (ext4 without auto_da_alloc, XFS).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_atomically(target: Path, data: bytes | memoryview, tmp_prefix: str) -> None:
    """Replace `target` by `data`. The temporary file is named `<tmp_prefix><random>.tmp`, so that
    one left by a killed process can be recognised; on an error it is removed and the OSError
    raised, with the previous `target` intact."""

    target = Path(target)
    tmp = None
    try:
        # Not mkstemp, whose files only their owner may read: the umask applies, as to any file
        # written by the project, so that others may read it (and a server may serve its copy).
        tmp = target.parent / f"{tmp_prefix}{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
