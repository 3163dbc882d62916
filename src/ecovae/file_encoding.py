"""One file's encoding: its clips streamed in batches through the encoder to a table of per-frame rows, with
what happened to it (encoded, truncated, silent, or skipped and why). Both engines run files through here: the
local one (:mod:`ecovae.encode`) and Ray's (:mod:`ecovae.encode_ray`).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ecovae.audio import BadAudio, Recording, open_recording
from ecovae.latents import (
    label_column_names,
    latent_columns,
    typed_label,
)
from ecovae.parts import (
    Layout,
    labels_digest,
)
from ecovae.precision import Encoder
from ecovae.spectrogram import SpectrogramConfig, expected_frames, iter_clips, remainder_seconds

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
    LIBC = ctypes.CDLL("libc.so.6")  # glibc's allocator knobs (see _trim_heap); None elsewhere
except OSError:
    LIBC = None


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
        return _Clips(rel, x.numpy(), [c.index for c in clips], clips[0].n_frames, silent=[c.silent for c in clips])


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
    *,
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
            result = _file_result(item.rec, got.pop(item.rel), spec, schema, label_columns=label_columns)
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
        rec,
        meta,
        np.concatenate(mus),
        logvar=np.concatenate(logvars),
        logmel=np.concatenate(logmels),
        schema=schema,
        label_columns=label_columns,
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
        silent=bool(meta["silent"].any()),
        truncated=truncated,
        tail_seconds=remainder_seconds(rec, spec),
        labels=labels_digest(rec.labels),
    )


def recording_table(
    rec: Recording,
    meta: dict[str, np.ndarray],
    mu: np.ndarray,
    *,
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


def _trim_heap() -> None:
    """Give the heap's free pages back to the OS (glibc) after each batch.

    Freed activations otherwise stay in a fragmented heap that grew with the
    file's length (full preset: 600 MB peak for 10 min, 793 MB for 2 h; with
    this, 546 and 550 MB). No measurable cost (3 runs each, 10 min of audio).
    """
    if LIBC is not None:
        LIBC.malloc_trim(0)
