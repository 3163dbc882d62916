"""Writing output files safely (whole or not at all, on the disk, with the user's umask); caches of work per file.

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


def safe_name(name: str) -> str:
    """A label value or column as part of a file name: letters, digits, '-', '_' and '.' kept, the rest '_'
    (a label 'habitat/type' must not name a folder)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


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


# --------------------------------------------------------------------------- caches of work done per file


def file_stats(root: Path, paths) -> dict[str, tuple[int, int] | None]:
    """Size and modification time of each file under ``root`` (None where it is gone): what a per-file cache
    checks before it trusts a row."""
    stats = {}
    for rel in paths:
        try:
            st = (Path(root) / rel).stat()
            stats[rel] = (st.st_size, st.st_mtime_ns)
        except OSError:
            stats[rel] = None
    return stats


def read_file_cache(cache_file: Path, key: str, settings: dict, *, stats: dict):
    """The rows of a per-file cache (``path``, ``_size``, ``_mtime_ns`` beside the values) made with these
    ``settings`` (schema metadata ``key``) whose file is unchanged; an empty table where there is none, it was
    made otherwise or it cannot be read (logged)."""
    import json
    import logging

    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not Path(cache_file).is_file():
        return pd.DataFrame()
    try:
        meta = pq.read_schema(cache_file).metadata or {}
        if json.loads(meta.get(key.encode(), b"{}")) != json.loads(json.dumps(settings)):  # tuples as lists
            return pd.DataFrame()
        cached = pd.read_parquet(cache_file)
    except (pa.ArrowException, OSError, ValueError) as e:
        logging.getLogger(__name__).warning("ignored unreadable cache %s (%s)", cache_file, e)
        return pd.DataFrame()
    ok = [stats.get(p) == (s, m) for p, s, m in zip(cached["path"], cached["_size"], cached["_mtime_ns"], strict=True)]
    return cached[np.array(ok, bool)]


def write_file_cache(cache_file: Path, table, key: str, *, settings: dict, meta: dict | None = None) -> None:
    """Write a per-file cache (atomically), its ``settings`` under the schema metadata ``key``."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    cache_file.parent.mkdir(parents=True, exist_ok=True)
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    extra = {k: json.dumps(v) for k, v in (meta or {}).items()}
    arrow = arrow.replace_schema_metadata({key: json.dumps(settings), **extra})
    with atomic_file(cache_file) as tmp:
        pq.write_table(arrow, tmp)
