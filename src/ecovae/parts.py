"""The crash-safe store that encoding writes the latents into: parts committed whole or not at all, the
done-index read from their footers, changed files' rows dropped, new labels given, one writer at a time (an OS
lock), and a single-file output merged from the parts at the end. Only :mod:`ecovae.encode` writes through it;
what the table and its footers hold is :mod:`ecovae.latents`'s.
"""

from __future__ import annotations

import errno
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

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ecovae.files import atomic_file
from ecovae.latents import (
    FILES_KEY,
    IDENTITY_KEY,
    damaged,
    is_dataset,
    label_column_names,
    list_parts,
    read_index,
    typed_label,
)


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
    *,
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
            raise damaged(source, e) from None
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


def drop_files(index: OutputIndex, rels_by_part: dict[Path, set[str]], layout: Layout, *, identity: dict) -> None:
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
        write_part(
            part.parent, layout.tmp, [table], entries=keep, schema=table.schema, identity=identity, name=part.name
        )
        index.parts[part] = keep


def labels_digest(labels: dict[str, str]) -> str:
    """A file's label values, as its done-index entry records them: changed labels are found without the audio."""
    text = json.dumps({k: (v or "") for k, v in labels.items()}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def relabel_files(
    index: OutputIndex,
    rels_by_holder: dict[Path | None, set[str]],
    layout: Layout,
    *,
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
        part = write_part(
            layout.parts,
            layout.tmp,
            [table],
            entries=entries,
            schema=schema,
            identity=identity,
            name=holder and holder.name,
        )
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


def finish_output(layout: Layout, schema: pa.Schema, identity: dict, *, drop: set[str]) -> OutputIndex:
    """Dataset: make sure it has at least one part (so it has a schema). File: merge the parts into it.

    The merge is idempotent: the merged file keeps its rows of files that no
    part holds (and that are not in ``drop``), then takes every part's rows.
    So a run killed after the merged file was renamed, but before the parts
    were removed, merges to the same rows again, never twice.
    """
    index = load_index(layout, schema, identity)
    if is_dataset(layout.out):
        if not index.parts:
            write_part(layout.parts, layout.tmp, [], entries={}, schema=schema, identity=identity)
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
