"""The latents: the Parquet table that encoding writes and analysis reads.

One row per frame: the recording (``path``), its labels, where the frame sits
in time, the posterior (``mu_*``, ``logvar_*``) and the frame's mean log-mel
per band (``logmel_*``: the "no learning" baseline on the same frames, written
while encoding, so analysis never decodes the audio again for it).

``out`` ending in ``.parquet`` is one Parquet file; any other ``out`` is a
Parquet dataset: a folder of ``part-*.parquet`` files with one schema, which
pandas, pyarrow, DuckDB and R's arrow read as one table. Encoding commits work
in parts, each written under a temporary name and renamed (whole or absent),
a file's rows never split across parts. Each part's footer lists the files it
holds, as they were when encoded, and what encoded them: the done-index, read
without reading any rows. A single-file output is the parts merged at the end.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ecovae.files import atomic_file

if TYPE_CHECKING:
    import pandas as pd

RESERVED = (
    "path",
    "start_time",
    "frame_time",
    "source_sample_rate",
    "source_channels",
    "clip_index",
    "frame_index",
    "frame_in_recording",
    "frame_offset_s",
    "silent",
)

# Per-frame feature sets: name -> (value prefix, log-variance prefix or None for point values).
FEATURE_SETS = {"vae": ("mu_", "logvar_"), "logmel": ("logmel_", None)}
BASELINE_PREFIXES = ("indices_", "birdnet_")  # per-window baseline tables (ecovae.baselines)
FEATURE_PREFIXES = ("mu_", "logvar_", "logmel_", *BASELINE_PREFIXES)


def feature_columns(prefix: str, dim: int) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(dim)]


def latent_columns(prefix: str, dim: int) -> list[str]:
    return feature_columns(f"{prefix}_", dim)


def label_column_names(columns: list[str]) -> dict[str, str]:
    """Label column -> output column (a label that clashes with a fixed column gets a ``label_`` prefix)."""
    return {c: (f"label_{c}" if c in RESERVED or c.startswith(FEATURE_PREFIXES) else c) for c in columns}


def is_feature_column(name: str) -> bool:
    return name.startswith(FEATURE_PREFIXES) and name.rsplit("_", 1)[-1].isdigit()


def value_columns(frames: pd.DataFrame, features: str) -> list[str]:
    """The value columns of a per-frame feature set (``vae``: mu_*, ``logmel``: logmel_*), in order."""
    if features not in FEATURE_SETS:
        raise ValueError(f"features must be among {sorted(FEATURE_SETS)}, not {features!r}")
    prefix = FEATURE_SETS[features][0]
    cols = [c for c in frames.columns if c.startswith(prefix) and is_feature_column(c)]
    if not cols:
        raise ValueError(f"no {prefix}* columns in the latents: is this an 'ecovae encode' output?")
    return cols


def silent_frames(frames: pd.DataFrame) -> np.ndarray:
    """Which rows are digitally silent frames (none where the table has no ``silent`` column)."""
    return frames["silent"].to_numpy(bool).copy() if "silent" in frames else np.zeros(len(frames), bool)


def latents_schema(label_columns: list[str], latent_dim: int, n_mels: int = 64) -> pa.Schema:
    """The schema of the latents Parquet file (see README, "Outputs")."""
    names = label_column_names(label_columns)
    return pa.schema(
        [pa.field("path", pa.string(), nullable=False)]
        + [pa.field(names[c], pa.string()) for c in label_columns]
        + [
            pa.field("start_time", pa.timestamp("ms")),
            pa.field("frame_time", pa.timestamp("ms")),
            pa.field("source_sample_rate", pa.int32()),
            pa.field("source_channels", pa.int16()),
            pa.field("clip_index", pa.int32()),
            pa.field("frame_index", pa.int32()),
            pa.field("frame_in_recording", pa.int32()),
            pa.field("frame_offset_s", pa.float64()),
            pa.field("silent", pa.bool_()),
        ]
        + [pa.field(c, pa.float32()) for c in latent_columns("mu", latent_dim)]
        + [pa.field(c, pa.float32()) for c in latent_columns("logvar", latent_dim)]
        + [pa.field(c, pa.float32()) for c in latent_columns("logmel", n_mels)]
    )


def read_latents(path: Path | str) -> pd.DataFrame:
    """The per-frame latents written by ``ecovae encode`` (a Parquet file or dataset folder).

    A missing, unreadable or empty one is an error that names it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such latents file or folder (make it with 'ecovae encode')")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable Parquet latents file ({e})") from None
    if table.num_rows == 0:
        raise ValueError(
            f"{path} holds no frames (0 rows): encoding skipped every file? see the .summary.json beside it"
        )
    return table.to_pandas()


def summary_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".parquet") + ".summary.json")


def is_dataset(out: Path | str) -> bool:
    """A folder of parts (a Parquet dataset) unless ``out`` names a ``.parquet`` file."""
    return Path(out).suffix != ".parquet"


# Parquet footer metadata of every part (the done-index): the files in it, each with its size and
# mtime when encoded and its flags, and what encoded them.
FILES_KEY, IDENTITY_KEY = b"ecovae.files", b"ecovae.identity"


def part_name(entries: dict[str, dict]) -> str:
    """A part's name follows from its files as they were when encoded: a redone piece of work
    replaces its part, never duplicates it; a changed file re-encoded gets a new name."""
    key = "\n".join(f"{rel}\t{e.get('size')}\t{e.get('mtime_ns')}" for rel, e in entries.items())
    return f"part-{hashlib.sha1(key.encode()).hexdigest()[:20]}.parquet"


def _footer(entries: dict[str, dict], identity: dict) -> dict[bytes, bytes]:
    return {
        FILES_KEY: json.dumps(entries).encode(),
        IDENTITY_KEY: json.dumps(identity, sort_keys=True).encode(),
    }


def write_part(
    folder: Path,
    tmp_dir: Path,
    tables: list[pa.Table],
    entries: dict[str, dict],
    schema: pa.Schema,
    identity: dict,
    name: str | None = None,
) -> Path:
    """Write one part atomically (temporary name, fsync, rename); its footer holds ``entries``.

    ``name`` rewrites an existing part in place (the rename replaces it whole).
    """
    final = folder / (name or part_name(entries))
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    with atomic_file(final, tmp_dir) as tmp:  # the rename is the commit point: these files are now done
        pq.write_table(table.replace_schema_metadata(_footer(entries, identity)), tmp)
    return final


def read_index(path: Path) -> tuple[dict[str, dict], dict | None]:
    """(entries by file, identity) from a part's footer.

    An older part lists only its files (``{}`` entries: size and mtime unknown);
    a file without a footer index: its path column, no identity.
    """
    meta = pq.read_metadata(path).metadata or {}
    if FILES_KEY in meta:
        files = json.loads(meta[FILES_KEY])
        entries = files if isinstance(files, dict) else {rel: {} for rel in files}
        return entries, json.loads(meta[IDENTITY_KEY])
    rels = pq.read_table(path, columns=["path"]).column("path").unique().to_pylist()
    return {rel: {} for rel in rels}, None


def list_parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


@dataclass
class Layout:
    """Where an encoding's parts, temporary files, lock and output go."""

    out: Path

    @property
    def parts(self) -> Path:
        return self.out if is_dataset(self.out) else self.out.with_name(self.out.name + ".partial")

    @property
    def tmp(self) -> Path:
        return self.parts / "_tmp"  # "_" prefix: Parquet readers skip it

    @property
    def lock(self) -> Path:
        return self.out / "_lock" if is_dataset(self.out) else self.out.with_name(self.out.name + ".lock")


@dataclass
class OutputIndex:
    """What an output holds, from its footers: each file's entry and where its rows are."""

    parts: dict[Path, dict[str, dict]]  # part -> its files' entries
    merged: dict[str, dict]  # a single-file output: the entries of the merged file
    rows: int = 0

    @property
    def entries(self) -> dict[str, dict]:
        """Every file in the output (a part's rows replace the merged file's for the same file)."""
        out = dict(self.merged)
        for entries in self.parts.values():
            out.update(entries)
        return out

    def holder(self) -> dict[str, Path | None]:
        """File -> the part holding its rows (None: the merged file)."""
        out: dict[str, Path | None] = dict.fromkeys(self.merged)
        for part, entries in self.parts.items():
            out.update(dict.fromkeys(entries, part))
        return out


def _sources(layout: Layout) -> list[Path]:
    """The output's files: the merged file (if any), then its parts."""
    return ([layout.out] if layout.out.is_file() else []) + list_parts(layout.parts)


def output_identity(layout: Layout) -> dict | None:
    """What encoded the output so far (model, correction, precision), or None if it holds nothing yet."""
    sources = _sources(layout)
    for source in sources:
        identity = read_index(source)[1]
        if identity is not None:
            return identity
    return None


def load_index(layout: Layout, schema: pa.Schema, identity: dict) -> OutputIndex:
    """Read the footers of the output, refusing to mix models, labels or corrections."""
    sources = _sources(layout)
    index = OutputIndex({}, {})
    for source in sources:
        if pq.read_schema(source) != schema:
            raise RuntimeError(f"{source} has another schema (model or labels differ); choose another --out")
        entries, other = read_index(source)
        if other is not None:
            other = {"precision": "fp32", **other}  # outputs from before precisions were recorded
        if other is not None and other != identity:
            differ = sorted(k for k in set(other) | set(identity) if other.get(k) != identity.get(k))
            said = "; ".join(f"{k}: {other.get(k)!r} there, {identity.get(k)!r} now" for k in differ if k != "offsets")
            raise RuntimeError(
                f"{source} was encoded with another model, labels, correction or precision ({said or 'offsets'}); "
                "one output never mixes them: delete it or choose another --out"
            )
        index.rows += pq.read_metadata(source).num_rows
        if source == layout.out:
            index.merged = entries
        else:
            index.parts[source] = entries
    return index


def drop_files(index: OutputIndex, rels_by_part: dict[Path, set[str]], layout: Layout, identity: dict) -> None:
    """Remove files' rows from parts, each part rewritten in place (or deleted when emptied).

    The rename replaces a part whole, so a kill at any moment leaves it with or
    without those files, never both copies nor a part lost.
    """
    for part, rels in rels_by_part.items():
        keep = {rel: e for rel, e in index.parts[part].items() if rel not in rels}
        if not keep:
            part.unlink()
            del index.parts[part]
            continue
        table = pq.read_table(part)
        table = table.filter(pc.is_in(table["path"], value_set=pa.array(sorted(keep), pa.string())))
        write_part(part.parent, layout.tmp, [table], keep, table.schema, identity, name=part.name)
        index.parts[part] = keep


@contextmanager
def output_lock(layout: Layout) -> Iterator[None]:
    """Hold an OS lock on the output while encoding: a second run on it is refused, not interleaved."""
    layout.lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise OutputBusy(
                f"{layout.out} is being written by another 'ecovae encode' ({holder}); "
                "wait for it to finish, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class OutputBusy(RuntimeError):
    """Another process is encoding into the same output."""


def finish_output(layout: Layout, schema: pa.Schema, identity: dict, drop: set[str]) -> OutputIndex:
    """Dataset: make sure it has at least one part (so it has a schema). File: merge the parts into it.

    The merge is idempotent: the merged file keeps its rows of files that no
    part holds (and that are not in ``drop``), then takes every part's rows.
    So a run killed after the merged file was renamed, but before the parts
    were removed, merges to the same rows again, never twice.
    """
    index = load_index(layout, schema, identity)
    if is_dataset(layout.out):
        if not index.parts:
            write_part(layout.parts, layout.tmp, [], {}, schema, identity)
            index = load_index(layout, schema, identity)
        shutil.rmtree(layout.tmp, ignore_errors=True)
        return index
    out = layout.out
    in_parts = {rel: e for entries in index.parts.values() for rel, e in entries.items()}
    merged_already = all(index.merged.get(rel) == e for rel, e in in_parts.items())
    if out.is_file() and merged_already and not (drop & set(index.merged)):
        shutil.rmtree(layout.parts, ignore_errors=True)  # nothing new (or merged before a kill)
        return OutputIndex({}, index.merged, pq.read_metadata(out).num_rows)
    keep = {rel: e for rel, e in index.merged.items() if rel not in in_parts and rel not in drop}
    entries = {**keep, **in_parts}
    footer = _footer(entries, identity)
    rows = 0
    with atomic_file(out, layout.tmp) as tmp:
        with pq.ParquetWriter(tmp, schema.with_metadata(footer)) as writer:
            # the earlier output first, then the new parts in file order; streamed row group by
            # row group, so memory stays that of one row group
            if out.is_file():
                f = pq.ParquetFile(out)
                filtered = len(keep) < len(index.merged)
                wanted = pa.array(sorted(keep), pa.string())
                for g in range(f.num_row_groups):
                    t = f.read_row_group(g)
                    if filtered:
                        t = t.filter(pc.is_in(t["path"], value_set=wanted))
                    writer.write_table(t.replace_schema_metadata(footer))
                    rows += t.num_rows
            for _, part in sorted((sorted(e), p) for p, e in index.parts.items()):
                f = pq.ParquetFile(part)
                for g in range(f.num_row_groups):
                    t = f.read_row_group(g)
                    writer.write_table(t.replace_schema_metadata(footer))
                    rows += t.num_rows
    shutil.rmtree(layout.parts)
    return OutputIndex({}, entries, rows)
