"""Encoding: every frame of every recording to its posterior, written to Parquet.

``out`` ending in ``.parquet`` is one Parquet file; any other ``out`` is a
Parquet dataset: a folder of ``part-*.parquet`` files with one schema, which
pandas, pyarrow, DuckDB and R's arrow read as one table.

Resumable and crash-safe. Finished files go into parts (under
``<out>.partial/`` for a single-file output, straight into the folder for a
dataset); a part is written under a temporary name and renamed, so it is
either whole or absent, and a file's rows are never split across parts. Each
part's footer lists the files it holds and the model that encoded them: that
is the index of what is done, so a re-run over 100,000 files reads footers,
never audio, and files already in a part are not encoded again. A
single-file output is made at the end by streaming the parts into it. So an
interrupted run, re-run, has exactly one row per frame: no duplicates and no
gaps.

Decoding and spectrograms run in DataLoader worker processes, overlapping the
model; ``engine="ray"`` spreads the files over a Ray cluster instead
(:mod:`ecovae.encode_ray`), writing the same parts.

Broken files are logged with their reason, counted and skipped; digitally
silent frames are encoded and flagged (``silent``); a file that ends before
its header says is encoded as far as it goes and flagged.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ecovae.audio import AUDIO_EXTENSIONS, BadAudio, Recording, discover, open_recording
from ecovae.files import atomic_file
from ecovae.latents import label_column_names, latent_columns
from ecovae.model import SoundscapeVAE
from ecovae.run import load_model, weights_digest
from ecovae.spectrogram import SpectrogramConfig, expected_frames, iter_clips, remainder_seconds

log = logging.getLogger(__name__)


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


@dataclass
class EncodeSummary:
    """What an encoding run did, and what the whole output now holds (``<out>.summary.json``).

    Flags and counts of the output come from the part footers, so they account
    for files encoded by earlier runs too; ``skipped`` is this run's account,
    which is the whole one: a file not in the output is tried again by every run.
    """

    out: str
    files_found: int = 0
    encoded: int = 0  # files encoded in this run
    already_done: int = 0  # files found encoded by an earlier run, unchanged since
    changed: list[str] = field(default_factory=list)  # size or mtime changed since encoded: re-encoded
    frames: int = 0  # rows written in this run
    files_in_output: int = 0
    frames_in_output: int = 0
    no_longer_found: int = 0  # in the output, but not on disk any more (their rows are kept)
    silent_files: list[str] = field(default_factory=list)  # in the output, with digitally silent frames
    truncated_files: dict[str, str] = field(default_factory=dict)  # in the output, encoded as far as readable
    skipped: dict[str, str] = field(default_factory=dict)  # relpath -> reason
    tail_seconds_not_encoded: float = 0.0  # audio after each file's last whole frame (whole output)
    wall_time_s: float = 0.0

    @property
    def flagged(self) -> int:
        return len(set(self.silent_files) | set(self.truncated_files))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flagged"] = self.flagged
        return d

    def lines(self) -> list[str]:
        out = [
            f"files found: {self.files_found}",
            f"encoded now: {self.encoded} ({self.frames} frames); already done: {self.already_done}"
            + (f"; re-encoded because they changed: {len(self.changed)}" if self.changed else ""),
            f"output: {self.files_in_output} files, {self.frames_in_output} frames"
            + (f" ({self.no_longer_found} no longer found on disk, rows kept)" if self.no_longer_found else ""),
            f"flagged: {self.flagged} (silent frames: {len(self.silent_files)}, truncated: {len(self.truncated_files)})",
            f"skipped: {len(self.skipped)}",
        ]
        out += [f"  {p}: {r}" for p, r in sorted(self.skipped.items())]
        out += [f"  changed {p}" for p in self.changed]
        out += [f"  truncated {p}: {r}" for p, r in sorted(self.truncated_files.items())]
        out.append(f"latents: {self.out}")
        return out


try:
    _LIBC = ctypes.CDLL("libc.so.6")  # glibc's allocator knobs (see _trim_heap); None elsewhere
except OSError:
    _LIBC = None

# Parquet footer metadata of every part (the done-index): the files in it, each with its size and
# mtime when encoded and its flags, and what encoded them.
FILES_KEY, IDENTITY_KEY = b"ecovae.files", b"ecovae.identity"


def summary_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".parquet") + ".summary.json")


def is_dataset(out: Path | str) -> bool:
    """A folder of parts (a Parquet dataset) unless ``out`` names a ``.parquet`` file."""
    return Path(out).suffix != ".parquet"


def default_workers(device: str, cpus: int | None = None) -> int:
    """DataLoader workers that decode beside the model, for ``device`` and ``cpus`` cores.

    On a CPU the model takes ~96% of the time (bench/README.md) and keeps the
    cores (torch's own thread count); one worker per 8 cores decodes beside it,
    none below 8 cores: on 2 cores a worker slowed encoding by ~10% (it takes
    turns with the model's threads) and added a process of ~470 MB. On a GPU
    the front-end is the bottleneck, so all cores but one decode.
    """
    cpus = cpus or len(os.sched_getaffinity(0))
    if str(device).startswith("cuda"):
        return min(8, max(1, cpus - 1))
    return cpus // 8


# --- the work: what each file becomes -------------------------------------------------


@dataclass(frozen=True)
class FileTask:
    """One file to encode, everything a worker needs, picklable."""

    path: Path
    rel: str
    labels: dict[str, str]
    offset: np.ndarray | None = None  # hardware correction: (mels,) subtracted from the log-mel
    size: int = 0  # bytes on disk when found: sizes chunks of work, and tells a changed file
    mtime_ns: int = 0


@dataclass
class _Clips:  # a batch of one file's clips, all with the same number of frames
    rel: str
    x: np.ndarray | None  # (B, 1, T, mels)
    clip_index: list[int]
    n_frames: int
    silent: list[np.ndarray]


@dataclass
class _FileEnd:
    rel: str
    rec: Recording
    size: int
    mtime_ns: int


@dataclass
class _FileFailed:
    rel: str
    reason: str


class ClipStream(torch.utils.data.IterableDataset):
    """Decode, resample and log-mel each file into batches of clips (runs in DataLoader workers).

    Yields each file's clip batches in order, then one end marker (or a failure
    marker: the consumer drops whatever came before it for that file).
    """

    def __init__(self, tasks: list[FileTask], root: Path, spec: SpectrogramConfig, batch_size: int):
        self.tasks, self.root, self.spec, self.batch_size = tasks, root, spec, batch_size

    def __iter__(self) -> Iterator[_Clips | _FileEnd | _FileFailed]:
        info = torch.utils.data.get_worker_info()
        tasks = self.tasks if info is None else self.tasks[info.id :: info.num_workers]
        for task in tasks:
            yield from self._file(task)

    def _file(self, task: FileTask) -> Iterator[_Clips | _FileEnd | _FileFailed]:
        try:
            rec = open_recording(task.path, self.root, task.labels)
            shift = None if task.offset is None else torch.as_tensor(task.offset, dtype=torch.float32)
            pending: list = []
            any_clip = False
            for clip in iter_clips(rec, self.spec):
                any_clip = True
                if pending and pending[0].n_frames != clip.n_frames:  # only equal lengths batch together
                    yield self._batch(task.rel, pending, shift)
                    pending = []
                pending.append(clip)
                if len(pending) == self.batch_size:
                    yield self._batch(task.rel, pending, shift)
                    pending = []
            if pending:
                yield self._batch(task.rel, pending, shift)
            if not any_clip:
                raise BadAudio(rec.path, f"shorter than one frame ({self.spec.frame_seconds:.3f} s)")
            yield _FileEnd(task.rel, rec, task.size, task.mtime_ns)
        except BadAudio as e:
            yield _FileFailed(task.rel, e.reason)
        except Exception as e:  # one odd file in a million must not stop the survey
            log.exception("unexpected error reading %s", task.path)
            yield _FileFailed(task.rel, f"unexpected error: {type(e).__name__}: {e}")

    @staticmethod
    def _batch(rel: str, clips: list, shift: torch.Tensor | None) -> _Clips:
        x = torch.stack([c.logmel if shift is None else c.logmel - shift for c in clips]).unsqueeze(1)
        # numpy, so it is pickled through the worker's pipe: a tensor would go through shared
        # memory, whose pages the worker's RSS keeps counting as the file goes on
        return _Clips(rel, x.numpy(), [c.index for c in clips], clips[0].n_frames, [c.silent for c in clips])


@dataclass
class FileResult:
    """What became of one file: its rows, or why it was skipped."""

    rel: str
    table: pa.Table | None = None
    frames: int = 0
    skipped: str | None = None
    silent: bool = False
    truncated: str | None = None
    tail_seconds: float = 0.0
    size: int = 0
    mtime_ns: int = 0

    def entry(self) -> dict:
        """This file's line in the done-index: what it was when encoded, and its flags."""
        return {
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "frames": self.frames,
            "silent": self.silent,
            "truncated": self.truncated,
            "tail_s": round(self.tail_seconds, 6),
        }


@torch.inference_mode()
def encode_stream(
    model: SoundscapeVAE,
    items: Iterable,
    spec: SpectrogramConfig,
    schema: pa.Schema,
    label_columns: list[str],
    device: str = "cpu",
) -> Iterator[FileResult]:
    """Run the model over a :class:`ClipStream`'s items; yield each file's result as it completes."""
    got: dict[str, list] = {}
    for item in items:
        if isinstance(item, _Clips):
            x = torch.from_numpy(item.x).to(device).contiguous(memory_format=torch.channels_last)
            mu, logvar = model.encode(x)  # (B, frames, D); channels-last: faster on CPU (bench/README.md)
            b, _, hops, mels = item.x.shape
            # the frame's mean log-mel per band: the no-learning baseline on the very same frames, free here
            band_means = item.x.reshape(b, hops // spec.frame_hops, spec.frame_hops, mels).mean(2)
            item.x = None  # keep the latents, not the spectrograms: memory must not grow with the file
            _trim_heap()
            got.setdefault(item.rel, []).append(
                (item, mu.float().cpu().numpy(), logvar.float().cpu().numpy(), band_means)
            )
        elif isinstance(item, _FileFailed):
            got.pop(item.rel, None)
            yield FileResult(item.rel, skipped=item.reason)
        else:
            result = _file_result(item.rec, got.pop(item.rel), spec, schema, label_columns)
            result.size, result.mtime_ns = item.size, item.mtime_ns
            yield result


def _file_result(
    rec: Recording, batches: list, spec: SpectrogramConfig, schema: pa.Schema, label_columns
) -> FileResult:
    clip_idx, frame_idx, silent, mus, logvars, logmels = [], [], [], [], [], []
    for b, mu, logvar, band_means in batches:
        for index, flags, m, lv, lm in zip(b.clip_index, b.silent, mu, logvar, band_means, strict=True):
            clip_idx.append(np.full(b.n_frames, index, np.int32))
            frame_idx.append(np.arange(b.n_frames, dtype=np.int32))
            silent.append(flags)
            mus.append(m)
            logvars.append(lv)
            logmels.append(lm)
    clip_a, frame_a = np.concatenate(clip_idx), np.concatenate(frame_idx)
    meta = {
        "clip_index": clip_a,
        "frame_index": frame_a,
        "frame_in_recording": np.arange(len(clip_a), dtype=np.int32),
        "frame_offset_s": clip_a * spec.clip_seconds + frame_a * spec.frame_seconds,
        "silent": np.concatenate(silent),
    }
    table = recording_table(
        rec, meta, np.concatenate(mus), np.concatenate(logvars), np.concatenate(logmels), schema, label_columns
    )
    promised = expected_frames(rec, spec)
    truncated = rec.truncated or (
        f"header promises {promised} frames, audio gave {table.num_rows}" if table.num_rows < promised else None
    )
    return FileResult(
        rec.relpath,
        table,
        table.num_rows,
        None,
        bool(meta["silent"].any()),
        truncated,
        remainder_seconds(rec, spec),
    )


def recording_table(
    rec: Recording,
    meta: dict[str, np.ndarray],
    mu: np.ndarray,
    logvar: np.ndarray,
    logmel: np.ndarray,
    schema: pa.Schema,
    label_columns: list[str],
) -> pa.Table:
    n = len(mu)
    names = label_column_names(label_columns)
    offsets_ms = np.round(meta["frame_offset_s"] * 1000).astype("int64")
    if rec.start_time is not None:
        start_ms = int(np.datetime64(rec.start_time, "ms").astype("int64"))
        start = pa.array(np.full(n, start_ms), pa.int64()).cast(pa.timestamp("ms"))
        frame_time = pa.array(start_ms + offsets_ms, pa.int64()).cast(pa.timestamp("ms"))
    else:
        start = frame_time = pa.nulls(n, pa.timestamp("ms"))
    columns = {
        "path": pa.array([rec.relpath] * n, pa.string()),
        **{names[c]: pa.array([rec.labels.get(c) or None] * n, pa.string()) for c in label_columns},
        "start_time": start,
        "frame_time": frame_time,
        "source_sample_rate": pa.array(np.full(n, rec.sample_rate, np.int32)),
        "source_channels": pa.array(np.full(n, rec.channels, np.int16)),
        **{k: pa.array(v) for k, v in meta.items()},
    }
    dim = mu.shape[1]
    columns.update({c: pa.array(mu[:, i]) for i, c in enumerate(latent_columns("mu", dim))})
    columns.update({c: pa.array(logvar[:, i]) for i, c in enumerate(latent_columns("logvar", dim))})
    logmel = np.ascontiguousarray(logmel, np.float32)
    columns.update({c: pa.array(logmel[:, i]) for i, c in enumerate(latent_columns("logmel", logmel.shape[1]))})
    return pa.table(columns, schema=schema)


# --- parts: the commit unit and the done-index -------------------------------------------


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


def load_index(layout: Layout, schema: pa.Schema, identity: dict) -> OutputIndex:
    """Read the footers of the output, refusing to mix models, labels or corrections."""
    sources = ([layout.out] if layout.out.is_file() else []) + list_parts(layout.parts)
    index = OutputIndex({}, {})
    for source in sources:
        if pq.read_schema(source) != schema:
            raise RuntimeError(f"{source} has another schema (model or labels differ); choose another --out")
        entries, other = read_index(source)
        if other is not None and other != identity:
            raise RuntimeError(
                f"{source} was encoded with another model, labels or correction; delete it or choose another --out"
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


# --- the run ------------------------------------------------------------------------------


@dataclass
class Job:
    """Everything about one encoding run that every worker shares (picklable)."""

    root: Path
    run_dir: Path
    layout: Layout
    schema: pa.Schema
    label_columns: list[str]
    identity: dict
    batch_size: int
    device: str


def record(summary: EncodeSummary, result: FileResult) -> None:
    """Count one file's result into this run's account, and log what needs a look."""
    if result.skipped is not None:
        log.warning("skipped %s: %s", result.rel, result.skipped)
        summary.skipped[result.rel] = result.skipped
        return
    summary.encoded += 1
    summary.frames += result.frames
    if result.truncated:
        log.warning("truncated %s: %s (encoded as far as it goes)", result.rel, result.truncated)


def encode(
    recordings: Path | str,
    run_dir: Path | str,
    out: Path | str,
    labels_csv: Path | str | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    rows_per_part: int = 20_000,
    progress: bool = True,
    offsets: dict[str, np.ndarray] | None = None,
    offset_column: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    engine: str = "local",
    address: str | None = None,
    commit_seconds: float = 120.0,
) -> EncodeSummary:
    """Encode every recording under ``recordings`` with the model of ``run_dir`` into ``out``.

    ``batch_size`` clips per forward pass (default 1 on a CPU, the fastest there and the
    least memory; 8 on a GPU). ``workers`` DataLoader processes decode beside the model and
    ``threads`` torch threads run it (defaults: :func:`default_workers`, torch's own). ``engine="ray"``
    runs on the Ray cluster at ``address`` (a local one if None). With ``offsets`` (label
    value -> (mels,) log-mel offset) and ``offset_column`` (the label holding the
    recorder), each file's recorder offset is removed before encoding (``ecovae.hardware``).
    Finished files are committed every ``rows_per_part`` frames or ``commit_seconds``,
    whichever comes first, so a killed run loses at most that much work.
    """
    t0 = time.time()
    root, run_dir, out = Path(recordings), Path(run_dir), Path(out)
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', not {engine!r}")
    batch_size = batch_size or (8 if str(device).startswith("cuda") else 1)
    model, spec = load_model(run_dir)
    not_searched: dict[str, str] = {}
    files, label_cols, labels = discover(root, labels_csv, not_searched)
    if not files:
        raise FileNotFoundError(f"{root}: no audio files (looked for {', '.join(AUDIO_EXTENSIONS)})")
    schema = latents_schema(label_cols, model.cfg.latent_dim, spec.n_mels)
    identity = {
        "weights": weights_digest(run_dir),
        "offsets": {k: np.round(np.asarray(v, float), 6).tolist() for k, v in (offsets or {}).items()},
        "offset_column": offset_column,
    }
    layout = Layout(out)
    if out.is_file() and is_dataset(out):
        raise RuntimeError(f"{out} is a file; a dataset output is a folder (or name a .parquet file)")
    with output_lock(layout):
        index = load_index(layout, schema, identity)
        layout.tmp.mkdir(parents=True, exist_ok=True)
        for tmp in layout.tmp.glob("*.tmp"):
            tmp.unlink()  # a part that was being written when a run stopped
        summary = EncodeSummary(out=str(out), files_found=len(files), skipped=dict(not_searched))
        tasks, drop = _plan(root, files, labels, index, layout, identity, offsets, offset_column, summary)
        job = Job(root, run_dir, layout, schema, label_cols, identity, batch_size, str(device))

        if engine == "ray":
            from ecovae.encode_ray import encode_on_ray

            encode_on_ray(job, tasks, summary, address=address, progress=progress)
        else:
            _encode_local(
                job,
                model.to(device, memory_format=torch.channels_last),
                spec,
                tasks,
                summary,
                rows_per_part,
                commit_seconds,
                progress,
                workers,
                threads,
            )
        index = _finish(layout, schema, identity, drop)
        _account(summary, index, {p.relative_to(_base(root)).as_posix() for p in files})
        summary.wall_time_s = round(time.time() - t0, 3)
        with atomic_file(summary_path(out)) as tmp:
            tmp.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def _base(root: Path) -> Path:
    return root if root.is_dir() else root.parent


def _plan(
    root: Path,
    files: list[Path],
    labels: dict[str, dict[str, str]],
    index: OutputIndex,
    layout: Layout,
    identity: dict,
    offsets: dict[str, np.ndarray] | None,
    offset_column: str | None,
    summary: EncodeSummary,
) -> tuple[list[FileTask], set[str]]:
    """The files to encode: those not in the output, and those changed since they were encoded.

    A changed file's old rows are taken out first (from its part now; from a
    merged file at the merge, returned as the set to drop), so a kill never
    leaves both its old and new rows.
    """
    done, holder = index.entries, index.holder()
    tasks: list[FileTask] = []
    stale: dict[Path, set[str]] = {}
    drop: set[str] = set()
    for p in files:
        rel = p.relative_to(_base(root)).as_posix()
        size, mtime_ns = _stat(p)
        entry = done.get(rel)
        if entry is not None:
            if entry.get("size") is None or (entry["size"], entry["mtime_ns"]) == (size, mtime_ns):
                summary.already_done += 1
                continue
            log.info("%s changed since it was encoded (size or mtime): encoding it again", rel)
            summary.changed.append(rel)
            part = holder[rel]
            if part is None:
                drop.add(rel)
            else:
                stale.setdefault(part, set()).add(rel)
        lab = labels.get(rel, {})
        offset = (offsets or {}).get(str(lab.get(offset_column))) if offset_column else None
        tasks.append(FileTask(p, rel, lab, offset, size, mtime_ns))
    drop_files(index, stale, layout, identity)
    return tasks, drop


def _account(summary: EncodeSummary, index: OutputIndex, found: set[str]) -> None:
    """The whole output's counts and flags, from its footers."""
    entries = index.entries
    summary.files_in_output = len(entries)
    summary.frames_in_output = index.rows
    summary.no_longer_found = len(set(entries) - found)
    summary.silent_files = sorted(rel for rel, e in entries.items() if e.get("silent"))
    summary.truncated_files = {rel: e["truncated"] for rel, e in sorted(entries.items()) if e.get("truncated")}
    summary.tail_seconds_not_encoded = round(sum(e.get("tail_s", 0.0) for e in entries.values()), 3)


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return 0, 0
    return st.st_size, st.st_mtime_ns


def _encode_local(
    job: Job,
    model: SoundscapeVAE,
    spec: SpectrogramConfig,
    tasks: list[FileTask],
    summary: EncodeSummary,
    rows_per_part: int,
    commit_seconds: float,
    progress: bool,
    workers: int | None,
    threads: int | None,
) -> None:
    from ecovae.progress import file_progress

    workers = default_workers(job.device) if workers is None else workers
    if threads:
        torch.set_num_threads(threads)
    stream = ClipStream(tasks, job.root, spec, job.batch_size)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=min(workers, len(tasks)),
        worker_init_fn=_worker_init,
        pin_memory=job.device.startswith("cuda"),
        collate_fn=_as_is,
    )
    tables: list[pa.Table] = []
    entries: dict[str, dict] = {}
    last_commit = time.monotonic()

    def commit() -> None:
        nonlocal last_commit
        if entries:
            write_part(job.layout.parts, job.layout.tmp, tables, dict(entries), job.schema, job.identity)
            tables.clear()
            entries.clear()
        last_commit = time.monotonic()

    with file_progress(len(tasks), "Encoding", enabled=progress) as advance:
        for result in encode_stream(model, loader, spec, job.schema, job.label_columns, job.device):
            record(summary, result)
            if result.table is not None:
                tables.append(result.table)
                entries[result.rel] = result.entry()
                # on frames (memory) and on time: a killed run loses minutes, not hours
                if sum(t.num_rows for t in tables) >= rows_per_part or time.monotonic() - last_commit >= commit_seconds:
                    commit()
            advance(frames=summary.frames, skipped=len(summary.skipped))
    commit()


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode one file each; the cores belong to the model
    _fixed_mmap_threshold()
    if _LIBC is not None and sys.platform == "linux":
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a killed run leaves no orphan decoders


def _trim_heap() -> None:
    """Give the heap's free pages back to the OS (glibc) after each batch.

    Freed activations otherwise stay in a fragmented heap that grew with the
    file's length (full preset: 600 MB peak for 10 min, 793 MB for 2 h; with
    this, 546 and 550 MB). No measurable cost (3 runs each, 10 min of audio).
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _fixed_mmap_threshold(nbytes: int = 128 * 1024) -> None:
    """Have glibc return freed blocks over ``nbytes`` to the OS at once.

    glibc raises its mmap threshold as big blocks are freed; after that, audio
    blocks and spectrograms come from a heap that fragments, and a decoding
    process grew with the file's length (+9% RSS from 10 min to 2 h). Not in the
    model's process: there the mmap calls cost ~20% of the speed.
    """
    if _LIBC is not None:
        _LIBC.mallopt(-3, nbytes)  # -3: M_MMAP_THRESHOLD


def _as_is(item):
    return item


def _finish(layout: Layout, schema: pa.Schema, identity: dict, drop: set[str]) -> OutputIndex:
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
