"""Encoding: every frame of every recording to its posterior, written to Parquet.

Resumable and crash-safe. While it runs, finished files go into numbered
parts under ``<out>.partial/``; a part is written to a temporary name and
renamed, so it is either whole or absent, and a file's rows are never split
across parts. On a re-run the files already in parts (or already in ``<out>``)
are not encoded again. At the end the parts are streamed into ``<out>`` (one
Parquet file) and removed. So an interrupted run, re-run, has exactly one row
per frame: no duplicates and no gaps.

Broken files are logged with their reason, counted and skipped; digitally
silent frames are encoded and flagged (``silent``); a file that ends before
its header says is encoded as far as it goes and flagged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ecovae.audio import BadAudio, Recording, discover, open_recording
from ecovae.model import SoundscapeVAE
from ecovae.spectrogram import SpectrogramConfig, expected_frames, iter_clips, remainder_seconds

log = logging.getLogger(__name__)

RESERVED = (
    "path", "start_time", "frame_time", "source_sample_rate", "source_channels", "clip_index",
    "frame_index", "frame_in_recording", "frame_offset_s", "silent",
)  # fmt: skip


def latent_columns(prefix: str, dim: int) -> list[str]:
    return [f"{prefix}_{i:03d}" for i in range(dim)]


def label_column_names(columns: list[str]) -> dict[str, str]:
    """Label column -> output column (a label that clashes with a fixed column gets a ``label_`` prefix)."""
    return {c: (f"label_{c}" if c in RESERVED or c.startswith(("mu_", "logvar_")) else c) for c in columns}


def latents_schema(label_columns: list[str], latent_dim: int) -> pa.Schema:
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
    )


@dataclass
class EncodeSummary:
    out: str
    files_found: int = 0
    encoded: int = 0  # files encoded in this run
    already_done: int = 0  # files found encoded by an earlier run
    frames: int = 0  # rows written in this run
    silent_files: list[str] = field(default_factory=list)  # encoded, with digitally silent frames
    truncated_files: dict[str, str] = field(default_factory=dict)  # encoded as far as readable
    skipped: dict[str, str] = field(default_factory=dict)  # relpath -> reason
    tail_seconds_not_encoded: float = 0.0  # audio after each file's last whole frame
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
            f"encoded now: {self.encoded} ({self.frames} frames); already done: {self.already_done}",
            f"flagged: {self.flagged} (silent frames: {len(self.silent_files)}, truncated: {len(self.truncated_files)})",
            f"skipped: {len(self.skipped)}",
        ]
        out += [f"  {p}: {r}" for p, r in sorted(self.skipped.items())]
        out += [f"  truncated {p}: {r}" for p, r in sorted(self.truncated_files.items())]
        out.append(f"latents: {self.out}")
        return out


def _weights_digest(run_dir: Path) -> str:
    h = hashlib.sha256()
    with (run_dir / "model.safetensors").open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@torch.inference_mode()
def encode_recording(
    model: SoundscapeVAE, rec: Recording, spec: SpectrogramConfig, batch_size: int = 8, device: str = "cpu",
    offset: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Per-frame metadata, mu and log var (frames, latent_dim) of one recording.

    ``offset`` (mels,) is subtracted from the log-mel first: a hardware correction.
    """
    shift = None if offset is None else torch.as_tensor(offset, dtype=torch.float32)
    clip_idx, frame_idx, silent, mus, logvars = [], [], [], [], []
    pending: list = []

    def run(clips) -> None:
        x = torch.stack([c.logmel if shift is None else c.logmel - shift for c in clips]).unsqueeze(1).to(device)
        x = x.contiguous(memory_format=torch.channels_last)  # faster convolutions on CPU (bench/README.md)
        mu, logvar = model.encode(x)  # (B, frames, D)
        for c, m, lv in zip(clips, mu.float().cpu().numpy(), logvar.float().cpu().numpy(), strict=True):
            clip_idx.append(np.full(c.n_frames, c.index, np.int32))
            frame_idx.append(np.arange(c.n_frames, dtype=np.int32))
            silent.append(c.silent)
            mus.append(m)
            logvars.append(lv)

    for clip in iter_clips(rec, spec):
        if pending and pending[0].n_frames != clip.n_frames:  # only equal lengths batch together
            run(pending)
            pending = []
        pending.append(clip)
        if len(pending) == batch_size:
            run(pending)
            pending = []
    if pending:
        run(pending)
    if not mus:
        raise BadAudio(rec.path, f"shorter than one frame ({spec.frame_seconds:.3f} s)")
    clip_idx_a = np.concatenate(clip_idx)
    frame_idx_a = np.concatenate(frame_idx)
    meta = {
        "clip_index": clip_idx_a,
        "frame_index": frame_idx_a,
        "frame_in_recording": np.arange(len(clip_idx_a), dtype=np.int32),
        "frame_offset_s": clip_idx_a * spec.clip_seconds + frame_idx_a * spec.frame_seconds,
        "silent": np.concatenate(silent),
    }
    return meta, np.concatenate(mus), np.concatenate(logvars)


def recording_table(
    rec: Recording, meta: dict[str, np.ndarray], mu: np.ndarray, logvar: np.ndarray, schema: pa.Schema,
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
    return pa.table(columns, schema=schema)


def _done_paths(files: list[Path]) -> set[str]:
    done: set[str] = set()
    for f in files:
        done.update(pq.read_table(f, columns=["path"]).column("path").unique().to_pylist())
    return done


def summary_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".parquet") + ".summary.json")


def encode(
    recordings: Path | str,
    run_dir: Path | str,
    out: Path | str,
    labels_csv: Path | str | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    rows_per_part: int = 20_000,
    progress: bool = True,
    offsets: dict[str, np.ndarray] | None = None,
    offset_column: str | None = None,
) -> EncodeSummary:
    """Encode every recording under ``recordings`` with the model of ``run_dir`` into ``out``.

    With ``offsets`` (label value -> (mels,) log-mel offset) and ``offset_column``
    (the label holding the recorder), each file's recorder offset is removed
    before encoding (see ``ecovae.hardware``).
    """
    from ecovae.progress import file_progress
    from ecovae.train import load_model

    t0 = time.time()
    root, run_dir, out = Path(recordings), Path(run_dir), Path(out)
    model, spec = load_model(run_dir)
    model = model.to(device, memory_format=torch.channels_last)
    files, label_cols, labels = discover(root, labels_csv)
    schema = latents_schema(label_cols, model.cfg.latent_dim)
    summary = EncodeSummary(out=str(out), files_found=len(files))

    partial = out.with_name(out.name + ".partial")
    identity = {
        "weights": _weights_digest(run_dir),
        "schema": schema.to_string(),
        "offsets": {k: np.round(np.asarray(v, float), 6).tolist() for k, v in (offsets or {}).items()},
        "offset_column": offset_column,
    }
    identity_file = partial / "identity.json"
    if identity_file.is_file() and json.loads(identity_file.read_text()) != identity:
        raise RuntimeError(
            f"{partial} holds an interrupted run with another model, labels or correction; "
            "delete it or choose another --out"
        )
    if partial.exists() and not identity_file.is_file() and any(partial.glob("part-*.parquet")):
        raise RuntimeError(f"{partial} holds parts of unknown origin; delete it or choose another --out")
    partial.mkdir(parents=True, exist_ok=True)
    tmp_identity = identity_file.with_name("identity.json.tmp")
    tmp_identity.write_text(json.dumps(identity))
    os.replace(tmp_identity, identity_file)
    for tmp in partial.glob("*.tmp"):
        tmp.unlink()  # a part that was being written when the run stopped
    if out.exists() and pq.read_schema(out) != schema:
        raise RuntimeError(f"{out} exists with another schema (model or labels differ); choose another --out")
    parts = sorted(partial.glob("part-*.parquet"))
    done = _done_paths(parts + ([out] if out.exists() else []))
    base = root if root.is_dir() else root.parent
    todo = [p for p in files if p.relative_to(base).as_posix() not in done]
    summary.already_done = len(files) - len(todo)

    buffer: list[pa.Table] = []
    buffered = 0
    next_part = max((int(p.stem.split("-")[1]) for p in parts), default=-1) + 1

    def flush() -> None:
        nonlocal buffer, buffered, next_part
        if not buffer:
            return
        final = partial / f"part-{next_part:06d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        pq.write_table(pa.concat_tables(buffer), tmp)
        os.replace(tmp, final)  # the commit point: these files are now done
        next_part += 1
        buffer, buffered = [], 0

    with file_progress(len(todo), "Encoding", enabled=progress) as advance:
        for path in todo:
            rel = path.relative_to(base).as_posix()
            try:
                rec = open_recording(path, root, labels.get(rel, {}))
                offset = (offsets or {}).get(str(rec.labels.get(offset_column))) if offset_column else None
                meta, mu, logvar = encode_recording(model, rec, spec, batch_size, device, offset)
            except BadAudio as e:
                log.warning("skipped %s", e)
                summary.skipped[rel] = e.reason
                advance(frames=summary.frames, skipped=len(summary.skipped))
                continue
            table = recording_table(rec, meta, mu, logvar, schema, label_cols)
            buffer.append(table)
            buffered += table.num_rows
            summary.encoded += 1
            summary.frames += table.num_rows
            summary.tail_seconds_not_encoded += remainder_seconds(rec, spec)
            if meta["silent"].any():
                summary.silent_files.append(rel)
            promised = expected_frames(rec, spec)
            reason = rec.truncated or (
                f"header promises {promised} frames, audio gave {table.num_rows}" if table.num_rows < promised else None
            )
            if reason:
                log.warning("truncated %s: %s (encoded as far as it goes)", path, reason)
                summary.truncated_files[rel] = reason
            if buffered >= rows_per_part:
                flush()
            advance(frames=summary.frames, skipped=len(summary.skipped))
    flush()
    _merge(out, sorted(partial.glob("part-*.parquet")), schema)
    shutil.rmtree(partial)
    summary.wall_time_s = round(time.time() - t0, 3)
    summary_path(out).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def _merge(out: Path, parts: list[Path], schema: pa.Schema) -> None:
    """Stream the earlier output (if any) and the parts into ``out``, row group by row group."""
    if not parts:
        if not out.exists():
            pq.write_table(schema.empty_table(), out)
        return
    tmp = out.with_name(out.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for source in ([out] if out.exists() else []) + parts:
            f = pq.ParquetFile(source)
            for i in range(f.num_row_groups):
                writer.write_table(f.read_row_group(i))
    os.replace(tmp, out)
