"""Writing output files safely: whole or not at all, on the disk, with the user's umask.

Every output of ecovae (weights, checkpoints, Parquet parts, JSON) is written
under a temporary name in the same file system, flushed, and renamed into
place, so a kill, a power cut or a full disk never leaves half a file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(path: Path, tmp_dir: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; when the block succeeds, flush it and rename it to ``path``.

    The temporary file is in ``tmp_dir`` (same file system; default: beside
    ``path``, hidden) under a unique name, since two processes may write the
    same file at once. It gets the mode the umask gives (some writers, such as
    safetensors, create files 0600), and is removed if the block fails: a full
    disk leaves no debris.
    """
    tmp = (tmp_dir or path.parent) / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        fsync(tmp)
        os.replace(tmp, path)  # the commit point
    finally:
        tmp.unlink(missing_ok=True)
    fsync(path.parent)  # the rename itself


def fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
