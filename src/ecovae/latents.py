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

import errno
import fcntl
import hashlib
import json
import os
import re
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
    "utc_offset_min",
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
    """Label column -> output column (a label that clashes with a fixed column gets a ``label_`` prefix).

    Two labels that would share an output column (``frame_time`` beside ``label_frame_time``) are an error.
    """
    names = {c: (f"label_{c}" if c in RESERVED or c.startswith(FEATURE_PREFIXES) else c) for c in columns}
    seen: dict[str, str] = {}
    for c, name in names.items():
        if name in seen:
            raise ValueError(
                f"the label columns {seen[name]!r} and {c!r} would both be written as {name!r} "
                "(a label named like a column ecovae writes gets the prefix 'label_'); rename one"
            )
        seen[name] = c
    return names


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


# --------------------------------------------------------------------------- label types
# A label keeps its type, so that DuckDB's WHERE hour >= 6 and R's filter(hour >= 6) work on the output:
# whole numbers, numbers, dates and times (with their offset, as UTC instants) are found from every value of
# the column; anything else, or a mix, stays text. A code with a leading zero ("007") is text: it is a name.
_INT = re.compile(r"[+-]?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[+-]?((0|[1-9][0-9]*)(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?")
_OFFSET = re.compile(r"(Z|[+-][0-9]{2}:?[0-9]{2})")
CLOCK_NOTE = (
    "the recorder's clock as its file name gives it (AudioMoth: UTC unless set otherwise; Song Meter: local "
    "time); the instant is this minus utc_offset_min where that is known"
)
OFFSET_NOTE = "minutes the recorder's clock is ahead of UTC, from the file's metadata (AudioMoth); null if unknown"


def label_types(labels: dict[str, dict[str, str]], columns: list[str]) -> dict[str, pa.DataType]:
    """Each label column's type, from all its values (empty ones aside): int64, float64, date32,
    timestamp (UTC where every value gives its offset), or string."""
    types = {}
    for c in columns:
        values = {str(row.get(c) or "").strip() for row in labels.values()} - {""}
        types[c] = _type_of(values)
    return types


def _type_of(values: set[str]) -> pa.DataType:
    def every(pattern: re.Pattern) -> bool:
        return all(pattern.fullmatch(v) for v in values)

    if not values:
        return pa.string()
    if every(_INT) and all(abs(int(v)) < 2**63 for v in values):
        return pa.int64()
    if every(_FLOAT):
        return pa.float64()
    if every(_DATE) and _parses(values, dates=True):
        return pa.date32()
    offsets = []
    for v in values:
        m = _TIME.match(v)
        rest = v[m.end() :] if m else None
        if rest is None or (rest and not _OFFSET.fullmatch(rest)):
            return pa.string()
        offsets.append(bool(rest))
    if not _parses(values) or any(offsets) != all(offsets):
        return pa.string()  # a mix of times with and without their offset: no one instant to store
    return pa.timestamp("ms", tz="UTC") if all(offsets) else pa.timestamp("ms")


def _parses(values: set[str], dates: bool = False) -> bool:
    import datetime as dt

    try:
        for v in values:
            (dt.date.fromisoformat if dates else dt.datetime.fromisoformat)(v.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def typed_label(value: str | None, type_: pa.DataType):
    """One label value as its column's type (None where empty)."""
    import datetime as dt

    value = (value or "").strip()
    if not value:
        return None
    if pa.types.is_int64(type_):
        return int(value)
    if pa.types.is_float64(type_):
        return float(value)
    if pa.types.is_date32(type_):
        return dt.date.fromisoformat(value)
    if pa.types.is_timestamp(type_):
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return t.astimezone(dt.timezone.utc) if t.tzinfo else t
    return value


def labels_schema_path(out: Path) -> Path:
    """The label columns' types, written beside the latents for readers that want them declared (CSVW-like)."""
    return out.with_name(out.name.removesuffix(".parquet") + ".labels_schema.json")


def labels_schema(label_columns: list[str], types: dict[str, pa.DataType], source: str) -> dict:
    names = label_column_names(label_columns)
    return {
        "source": source,
        "columns": [{"name": names[c], "label": c, "type": str(types[c])} for c in label_columns],
        "times": {"start_time": CLOCK_NOTE, "frame_time": CLOCK_NOTE, "utc_offset_min": OFFSET_NOTE},
    }


def latents_schema(
    label_columns: list[str],
    latent_dim: int,
    n_mels: int = 64,
    types: dict[str, pa.DataType] | None = None,
) -> pa.Schema:
    """The schema of the latents Parquet file (see README, "Outputs"); labels are text unless ``types`` says."""
    names = label_column_names(label_columns)
    types = types or {}
    clock = {b"description": CLOCK_NOTE.encode()}
    return pa.schema(
        [pa.field("path", pa.string(), nullable=False)]
        + [pa.field(names[c], types.get(c, pa.string())) for c in label_columns]
        + [
            pa.field("start_time", pa.timestamp("ms"), metadata=clock),
            pa.field("frame_time", pa.timestamp("ms"), metadata=clock),
            pa.field("utc_offset_min", pa.int16(), metadata={b"description": OFFSET_NOTE.encode()}),
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
    models = _models_in(path)
    if len(models) > 1:
        raise ValueError(
            f"{path} holds parts encoded by {len(models)} different models or settings ({'; '.join(models)}): "
            "every frame would be counted once per model; keep one model's parts per folder"
        )
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable Parquet latents file ({e})") from None
    if table.num_rows == 0:
        raise ValueError(
            f"{path} holds no frames (0 rows): encoding skipped every file? see the .summary.json beside it"
        )
    return table.to_pandas()


def _models_in(path: Path) -> list[str]:
    """What encoded each part of a dataset (weights digest and precision, from the footers); one file: one."""
    found = {}
    for part in list_parts(path) if path.is_dir() else []:
        identity = read_index(part)[1]
        if identity:
            key = json.dumps({"precision": "fp32", **identity}, sort_keys=True)
            found[key] = (
                f"weights {str(identity.get('weights'))[:12]}, {identity.get('precision', 'fp32')}, "
                f"correction {identity.get('offset_column') or 'none'}"
            )
    return list(found.values())


def summary_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".parquet") + ".summary.json")


def is_dataset(out: Path | str) -> bool:
    """A folder of parts (a Parquet dataset) unless ``out`` names a ``.parquet`` file."""
    return Path(out).suffix.lower() != ".parquet"


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


def _damaged(path: Path, error: Exception) -> RuntimeError:
    return RuntimeError(f"{path} is damaged ({error}); move it away and run again: the files it held are encoded again")


def read_index(path: Path) -> tuple[dict[str, dict], dict | None]:
    """(entries by file, identity) from a part's footer.

    An older part lists only its files (``{}`` entries: size and mtime unknown);
    a file without a footer index: its path column, no identity.
    """
    try:
        meta = pq.read_metadata(path).metadata or {}
    except (pa.ArrowException, OSError) as e:
        raise _damaged(path, e) from None
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
        try:
            there = pq.read_schema(source)
        except (pa.ArrowException, OSError) as e:
            raise _damaged(source, e) from None
        if not there.equals(schema, check_metadata=False):
            theirs = {f.name: str(f.type) for f in there}
            ours = {f.name: str(f.type) for f in schema}
            differ = [
                f"{n}: {theirs.get(n, 'absent')} there, {ours.get(n, 'absent')} now"
                for n in dict.fromkeys([*theirs, *ours])
                if theirs.get(n) != ours.get(n)
            ]
            raise RuntimeError(
                f"{source} has another schema ({'; '.join(differ[:4])}{'; ...' if len(differ) > 4 else ''}): "
                "the model, the label columns or their types differ; delete it or choose another --out"
            )
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


def labels_digest(labels: dict[str, str]) -> str:
    """A file's label values, as its done-index entry records them: changed labels are found without the audio."""
    text = json.dumps({k: (v or "") for k, v in labels.items()}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def relabel_files(
    index: OutputIndex,
    rels_by_holder: dict[Path | None, set[str]],
    layout: Layout,
    identity: dict,
    labels: dict[str, dict[str, str]],
    label_columns: list[str],
) -> None:
    """Give files' rows their current labels without encoding again (labels do not depend on the model).

    A part is rewritten in place; rows in a merged file are copied into a new part with their new labels,
    which the merge then takes instead of the old rows. Either way a kill leaves the old labels or the new.
    """
    names = label_column_names(label_columns)
    for holder, rels in rels_by_holder.items():
        wanted = pa.array(sorted(rels), pa.string())
        if holder is None:  # only these files' rows, row group by row group: the merged file may be large
            f = pq.ParquetFile(layout.out)
            table = pa.concat_tables(
                [
                    t.filter(pc.is_in(t["path"], value_set=wanted))
                    for t in (f.read_row_group(g) for g in range(f.num_row_groups))
                ]
            )
            entries = {rel: index.merged[rel] for rel in rels}
        else:
            table, entries = pq.read_table(holder), index.parts[holder]
        schema = table.schema.remove_metadata()
        paths = table["path"].to_pylist()
        for c in label_columns:
            field = schema.field(names[c])
            old = table[names[c]].to_pylist()
            new = [
                typed_label(labels.get(p, {}).get(c), field.type) if p in rels else o
                for p, o in zip(paths, old, strict=True)
            ]
            table = table.set_column(schema.get_field_index(names[c]), field, pa.array(new, field.type))
        entries = {
            rel: ({**e, "labels": labels_digest(labels.get(rel, {}))} if rel in rels else e)
            for rel, e in entries.items()
        }
        part = write_part(layout.parts, layout.tmp, [table], entries, schema, identity, name=holder and holder.name)
        index.parts[part] = entries


@contextmanager
def output_lock(layout: Layout) -> Iterator[None]:
    """Hold an OS lock on the output while encoding: a second run on it is refused, not interleaved.

    The lock file is never followed as a link (a link there could point at any file, which would be
    overwritten) and is removed when the run ends, so a finished output leaves nothing behind.
    """
    layout.lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise RuntimeError(
                    f"{layout.lock} is a symbolic link; ecovae writes its lock there: remove the link"
                ) from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputBusy(
                f"{layout.out} is being written by another 'ecovae encode' ({holder}); "
                "wait for it to finish, or choose another --out"
            ) from None
        try:  # the holder before us may have removed the file after we opened it: lock the one on disk
            same = os.stat(layout.lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".ljust(120).encode(), 0)
        yield
        layout.lock.unlink(missing_ok=True)  # still holding it: nobody can take it in between
    finally:
        os.close(fd)  # closing releases the lock


def check_tmp_folder(layout: Layout) -> None:
    """The temporary folder must be the output's own: a link there would have another folder's files deleted."""
    if layout.tmp.is_symlink():
        raise RuntimeError(f"{layout.tmp} is a symbolic link; ecovae deletes its stale files there: remove the link")


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
