"""Encoding: every frame of every recording to its posterior, written to Parquet.

Resumable and crash-safe: finished files are committed in parts whose
footers are the index of what is done (:mod:`ecovae.latents`), so a re-run
over 100,000 files reads footers, never audio, and files already in a part
are not encoded again. An interrupted run, re-run, has exactly one row per
frame: no duplicates and no gaps.

Decoding and spectrograms run in DataLoader worker processes, overlapping the
model; ``engine="ray"`` spreads the files over a Ray cluster instead
(the Ray engine, at the end of this module), writing the same parts.

Broken files are logged with their reason, counted and skipped; digitally
silent frames are encoded and flagged (``silent``); a file that ends before
its header says is encoded as far as it goes and flagged.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ecovae.audio import BadAudio, Recording, open_recording
from ecovae.files import atomic_file
from ecovae.latents import (
    Layout,
    OutputIndex,
    check_tmp_folder,
    drop_files,
    finish_output,
    is_dataset,
    label_column_names,
    label_types,
    labels_digest,
    labels_schema,
    labels_schema_path,
    latent_columns,
    latents_schema,
    load_index,
    output_identity,
    output_lock,
    relabel_files,
    summary_path,
    typed_label,
    write_part,
)
from ecovae.precision import Encoder, choose, confirm_on_survey
from ecovae.run import load_model, weights_digest
from ecovae.spectrogram import SpectrogramConfig, expected_frames, iter_clips, remainder_seconds
from ecovae.survey import Survey, open_survey

log = logging.getLogger(__name__)


@dataclass
class EncodeSummary:
    """What an encoding run did, and what the whole output now holds (``<out>.summary.json``).

    Flags and counts of the output come from the part footers, so they account
    for files encoded by earlier runs too; ``skipped`` is this run's account,
    which is the whole one: a file not in the output is tried again by every run.
    """

    out: str
    precision: str = "fp32"  # the encoder's numeric precision (ecovae.precision), the same for every row
    files_found: int = 0
    encoded: int = 0  # files encoded in this run
    already_done: int = 0  # files found encoded by an earlier run, unchanged since
    changed: list[str] = field(default_factory=list)  # size or mtime changed since encoded: re-encoded
    relabelled: list[str] = field(default_factory=list)  # labels changed since encoded: rows given the new ones
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
            + (f"; re-encoded because they changed: {len(self.changed)}" if self.changed else "")
            + (f"; given their new labels: {len(self.relabelled)}" if self.relabelled else ""),
            f"output: {self.files_in_output} files, {self.frames_in_output} frames"
            + (f" ({self.no_longer_found} no longer found on disk, rows kept)" if self.no_longer_found else ""),
            f"flagged: {self.flagged} (silent frames: {len(self.silent_files)}, truncated: {len(self.truncated_files)})",
            f"skipped: {len(self.skipped)}",
            f"precision: {self.precision}",
        ]
        out += [f"  {p}: {r}" for p, r in sorted(self.skipped.items())]
        out += [f"  changed {p}" for p in self.changed]
        out += [f"  relabelled {p}" for p in self.relabelled]
        out += [f"  truncated {p}: {r}" for p, r in sorted(self.truncated_files.items())]
        out.append(f"latents: {self.out}")
        return out


try:
    _LIBC = ctypes.CDLL("libc.so.6")  # glibc's allocator knobs (see _trim_heap); None elsewhere
except OSError:
    _LIBC = None


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
    labels: str | None = None  # digest of the label values it was written with

    def entry(self) -> dict:
        """This file's line in the done-index: what it was when encoded, its labels and its flags."""
        return {
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "labels": self.labels,
            "frames": self.frames,
            "silent": self.silent,
            "truncated": self.truncated,
            "tail_s": round(self.tail_seconds, 6),
        }


def encode_stream(
    encoder: Encoder,
    items: Iterable,
    spec: SpectrogramConfig,
    schema: pa.Schema,
    label_columns: list[str],
) -> Iterator[FileResult]:
    """Run the encoder (:mod:`ecovae.precision`) over a :class:`ClipStream`'s items; yield each file's result
    as it completes."""
    got: dict[str, list] = {}
    for item in items:
        if isinstance(item, _Clips):
            mu, logvar = encoder(torch.from_numpy(item.x))  # (B, frames, D), fp32
            b, _, hops, mels = item.x.shape
            # the frame's mean log-mel per band: the no-learning baseline on the very same frames, free here
            band_means = item.x.reshape(b, hops // spec.frame_hops, spec.frame_hops, mels).mean(2)
            item.x = None  # keep the latents, not the spectrograms: memory must not grow with the file
            _trim_heap()
            got.setdefault(item.rel, []).append((item, mu.cpu().numpy(), logvar.cpu().numpy(), band_means))
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
        labels=labels_digest(rec.labels),
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
        **{
            names[c]: pa.array(
                [typed_label(rec.labels.get(c), schema.field(names[c]).type)] * n, schema.field(names[c]).type
            )
            for c in label_columns
        },
        "start_time": start,
        "frame_time": frame_time,
        "utc_offset_min": pa.array([rec.utc_offset_min] * n, pa.int16()),
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
    precision: str  # a mode, not "auto": every worker encodes in the one the run chose


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
    precision: str = "auto",
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
    ``precision`` is the encoder's (:mod:`ecovae.precision`): ``auto`` takes the precision the
    output was encoded in if it exists, else the fastest mode that passed its check here.
    """
    t0 = time.time()
    root, run_dir, out = Path(recordings), Path(run_dir), Path(out)
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', not {engine!r}")
    batch_size = batch_size or (8 if str(device).startswith("cuda") else 1)
    model, spec = load_model(run_dir)
    survey = open_survey(root, labels_csv, spec)
    label_cols = survey.label_columns
    types = label_types(survey.labels, label_cols)
    schema = latents_schema(label_cols, model.cfg.latent_dim, spec.n_mels, types)
    layout = Layout(out)
    if out.is_file() and is_dataset(out):
        raise RuntimeError(f"{out} is a file; a dataset output is a folder (or name a .parquet file)")
    if threads:
        torch.set_num_threads(threads)  # before the encoder is built: ONNX Runtime takes its count then
    with output_lock(layout):
        recorded = output_identity(layout)
        mode, encoder = choose(precision, model, run_dir, device, recorded and recorded.get("precision", "fp32"))
        if precision == "auto" and recorded is None:  # a new output: its precision is fixed from here on
            mode, encoder = confirm_on_survey(mode, encoder, model, survey, device)
        identity = {
            "weights": weights_digest(run_dir),
            "offsets": {k: np.round(np.asarray(v, float), 6).tolist() for k, v in (offsets or {}).items()},
            "offset_column": offset_column,
            "precision": mode,
        }
        index = load_index(layout, schema, identity)
        check_tmp_folder(layout)
        layout.tmp.mkdir(parents=True, exist_ok=True)
        for tmp in layout.tmp.glob("*.tmp"):
            tmp.unlink()  # a part that was being written when a run stopped
        summary = EncodeSummary(str(out), mode, files_found=len(survey.files), skipped=dict(survey.skipped))
        tasks, drop = _plan(survey, index, layout, identity, offsets, offset_column, summary)
        job = Job(survey.root, run_dir, layout, schema, label_cols, identity, batch_size, str(device), mode)

        if engine == "ray":
            encode_on_ray(job, tasks, summary, address=address, progress=progress)
        else:
            _encode_local(
                job,
                encoder,
                spec,
                tasks,
                summary,
                rows_per_part,
                commit_seconds,
                progress,
                workers,
            )
        index = finish_output(layout, schema, identity, drop)
        _account(summary, index, set(survey.files))
        summary.wall_time_s = round(time.time() - t0, 3)
        with atomic_file(summary_path(out)) as tmp:
            tmp.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
        source = str(labels_csv or (root / "labels.csv" if (root / "labels.csv").is_file() else "the folder layout"))
        with atomic_file(labels_schema_path(out)) as tmp:
            tmp.write_text(json.dumps(labels_schema(label_cols, types, source), indent=2) + "\n")
    return summary


def recorded_correction(out: Path | str) -> tuple[str | None, dict[str, np.ndarray]]:
    """The hardware correction an existing output was encoded with: (recorder column, offsets by recorder).

    A growing output keeps its offsets: fitted again on a larger survey they would differ, and one output
    never mixes two corrections."""
    identity = output_identity(Layout(Path(out))) or {}
    offsets = {k: np.asarray(v, np.float32) for k, v in (identity.get("offsets") or {}).items()}
    return identity.get("offset_column"), offsets


def _plan(
    survey: Survey,
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
    relabel: dict[Path | None, set[str]] = {}
    unknown: dict[str, str] = {}  # recorder without an offset -> a file of it
    drop: set[str] = set()
    for rel in survey.files:
        p = survey.root / rel
        size, mtime_ns = _stat(p)
        entry = done.get(rel)
        if entry is not None:
            if entry.get("size") is None or (entry["size"], entry["mtime_ns"]) == (size, mtime_ns):
                summary.already_done += 1
                if entry.get("labels") not in (None, labels_digest(survey.labels.get(rel, {}))):
                    summary.relabelled.append(rel)
                    relabel.setdefault(holder[rel], set()).add(rel)
                continue
            log.info("%s changed since it was encoded (size or mtime): encoding it again", rel)
            summary.changed.append(rel)
            part = holder[rel]
            if part is None:
                drop.add(rel)
            else:
                stale.setdefault(part, set()).add(rel)
        lab = survey.labels.get(rel, {})
        offset = (offsets or {}).get(str(lab.get(offset_column))) if offset_column else None
        if offset_column and offset is None:
            unknown.setdefault(str(lab.get(offset_column) or ""), rel)
        tasks.append(FileTask(p, rel, lab, offset, size, mtime_ns))
    if unknown:
        said = ", ".join(f"{k or '(empty)'} (e.g. {v})" for k, v in sorted(unknown.items())[:5])
        raise RuntimeError(
            f"no hardware offset for the {offset_column} value(s) {said}: the offsets were fitted on recorders "
            f"{sorted(offsets or {})}; encode these into another --out, which fits offsets for every recorder"
        )
    drop_files(index, stale, layout, identity)
    if relabel:
        log.info("%d files have new labels: their rows are given them (no encoding needed)", len(summary.relabelled))
        relabel_files(index, relabel, layout, identity, survey.labels, survey.label_columns)
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
    encoder: Encoder,
    spec: SpectrogramConfig,
    tasks: list[FileTask],
    summary: EncodeSummary,
    rows_per_part: int,
    commit_seconds: float,
    progress: bool,
    workers: int | None,
) -> None:
    from ecovae.progress import file_progress

    workers = default_workers(job.device) if workers is None else workers
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
        for result in encode_stream(encoder, loader, spec, job.schema, job.label_columns):
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


# --- the Ray engine ------------------------------------------------------------------------
# Encoding on a Ray cluster (``pip install ecovae[distributed]``): the same parts, spread over workers.
#
# Files are grouped into chunks by size on disk; each chunk is one Ray task that
# encodes its files and writes one part named after them
# (:func:`ecovae.latents.write_part`). A task whose worker dies is retried once;
# the retry writes the part of the same name, so redone work replaces and never
# duplicates. Files of a chunk that fails twice are counted as skipped, with the
# error, like any unreadable file. Each worker process loads the model once and
# keeps it for the tasks that follow.
#
# On a multi-node cluster the recordings, the run folder and the output folder
# must be on storage that every node sees (a cluster file system).

_MODELS: dict = {}  # in each worker process: the model of the last job, loaded once


def _encoder(job: Job) -> tuple[Encoder, SpectrogramConfig]:
    key = (str(job.run_dir), job.identity["weights"], job.device, job.precision)
    if key not in _MODELS:
        model, spec = load_model(job.run_dir)
        _MODELS.clear()
        _MODELS[key] = (choose(job.precision, model, job.run_dir, job.device)[1], spec)
    return _MODELS[key]


def encode_chunk(job: Job, tasks: list[FileTask]) -> list[FileResult]:
    """One Ray task: encode ``tasks`` and commit them as one part; the results without their rows."""
    encoder, spec = _encoder(job)
    stream = ClipStream(tasks, job.root, spec, job.batch_size)
    results = list(encode_stream(encoder, stream, spec, job.schema, job.label_columns))
    done = [r for r in results if r.table is not None]
    if done:
        write_part(
            job.layout.parts,
            job.layout.tmp,
            [r.table for r in done],
            {r.rel: r.entry() for r in done},
            job.schema,
            job.identity,
        )
    return [replace(r, table=None) for r in results]


def chunks(tasks: list[FileTask], n_chunks: int, max_bytes: int = 256 << 20) -> list[list[FileTask]]:
    """Consecutive files in about ``n_chunks`` groups of equal size on disk, each at most ~``max_bytes``."""
    total = sum(max(t.size, 1) for t in tasks)
    target = max(1, min(max_bytes, total // max(1, n_chunks)))
    out: list[list[FileTask]] = []
    current: list[FileTask] = []
    size = 0
    for t in tasks:
        current.append(t)
        size += max(t.size, 1)
        if size >= target:
            out.append(current)
            current, size = [], 0
    if current:
        out.append(current)
    return out


def encode_on_ray(
    job: Job,
    tasks: list[FileTask],
    summary: EncodeSummary,
    address: str | None = None,
    progress: bool = True,
    cpus_per_task: float = 1,
    gpus_per_task: float | None = None,
) -> None:
    """Encode ``tasks`` on the Ray cluster at ``address`` (a new local one if None), counting into ``summary``."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("engine 'ray' needs Ray: pip install 'ecovae[distributed]'") from None
    from ecovae.progress import file_progress

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        if gpus_per_task is None:
            gpus_per_task = 1 if job.device.startswith("cuda") else 0
        slots = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_task))
        work = chunks(tasks, 4 * slots)  # a few chunks per slot: balance, and little lost to a crash
        remote = ray.remote(encode_chunk).options(max_retries=1, num_cpus=cpus_per_task, num_gpus=gpus_per_task)
        job_ref = ray.put(job)
        pending = {remote.remote(job_ref, chunk): chunk for chunk in work}
        with file_progress(len(tasks), f"Encoding on Ray ({slots} workers)", enabled=progress) as advance:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                chunk = pending.pop(ref)
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayError as e:  # failed twice: report its files, go on with the rest
                    reason = f"encoding task failed twice ({type(e).__name__})"
                    log.error("%s for %d files: %s", reason, len(chunk), e)
                    results = [FileResult(t.rel, skipped=reason) for t in chunk]
                for r in results:
                    record(summary, r)
                advance(len(chunk), frames=summary.frames, skipped=len(summary.skipped))
    finally:
        if started:
            ray.shutdown()
