"""Encoding: every frame of every recording to its posterior, written to Parquet.

Resumable and crash-safe: finished files are committed in parts whose
footers are the index of what is done (:mod:`ecovae.latents`), so a re-run
over 100,000 files reads footers, never audio, and files already in a part
are not encoded again. An interrupted run, re-run, has exactly one row per
frame: no duplicates and no gaps.

Decoding and spectrograms run in DataLoader worker processes, overlapping the
model; ``engine="ray"`` spreads the files over a Ray cluster instead
(:mod:`ecovae.encode_ray`), writing the same parts.

Broken files are logged with their reason, counted and skipped; digitally
silent frames are encoded and flagged (``silent``); a file that ends before
its header says is encoded as far as it goes and flagged.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ecovae.file_encoding import LIBC, ClipStream, EncodeSummary, FileTask, Job, encode_stream, record
from ecovae.files import atomic_file
from ecovae.latents import (
    is_dataset,
    label_types,
    labels_schema,
    labels_schema_path,
    latents_schema,
    summary_path,
)
from ecovae.parts import (
    Layout,
    OutputIndex,
    check_tmp_folder,
    drop_files,
    finish_output,
    labels_digest,
    load_index,
    output_identity,
    output_lock,
    relabel_files,
    write_part,
)
from ecovae.precision import Encoder, choose, confirm_on_survey
from ecovae.run import load_model, weights_digest
from ecovae.spectrogram import SpectrogramConfig
from ecovae.survey import Survey, as_survey

log = logging.getLogger(__name__)


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


# --- the run ------------------------------------------------------------------------------


def encode(
    recordings: Survey | Path | str,
    run_dir: Path | str,
    out: Path | str,
    *,
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
    """Encode every recording of a survey (a :class:`~ecovae.survey.Survey`, or a folder) with the model of
    ``run_dir`` into ``out``.

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
    t0, run_dir, out = time.time(), Path(run_dir), Path(out)
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', not {engine!r}")
    batch_size = batch_size or (8 if str(device).startswith("cuda") else 1)  # a CPU: the fastest, least memory
    model, spec = load_model(run_dir)
    survey = as_survey(recordings, labels_csv, spec)
    label_cols, types = survey.label_columns, label_types(survey.labels, survey.label_columns)
    schema = latents_schema(label_cols, model.cfg.latent_dim, spec.n_mels, types=types)
    if out.is_file() and is_dataset(out):
        raise RuntimeError(f"{out} is a file; a dataset output is a folder (or name a .parquet file)")
    layout = Layout(out)
    if threads:
        torch.set_num_threads(threads)  # before the encoder is built: ONNX Runtime takes its count then
    with output_lock(layout):
        recorded = output_identity(layout)
        mode, encoder = choose(
            precision, model, run_dir, device=device, recorded=recorded and recorded.get("precision", "fp32")
        )
        if precision == "auto" and recorded is None:  # a new output: its precision is fixed from here on
            mode, encoder = confirm_on_survey(mode, encoder, model, survey=survey, device=device)
        rounded = {k: np.round(np.asarray(v, float), 6).tolist() for k, v in (offsets or {}).items()}
        identity = {"weights": weights_digest(run_dir), "offsets": rounded, "offset_column": offset_column}
        identity["precision"] = mode
        index = _open_output(layout, schema, identity)
        summary = EncodeSummary(str(out), mode, files_found=len(survey.files), skipped=dict(survey.skipped))
        tasks, drop = _plan(
            survey, index, layout, identity, offsets=offsets, offset_column=offset_column, summary=summary
        )
        job = Job(
            survey.root,
            run_dir,
            layout,
            schema,
            label_columns=label_cols,
            identity=identity,
            batch_size=batch_size,
            device=str(device),
            precision=mode,
        )
        if engine == "ray":
            from ecovae.encode_ray import encode_on_ray  # Ray is an extra: imported only when asked for

            encode_on_ray(job, tasks, summary, address=address, progress=progress)
        else:
            _encode_local(
                job,
                encoder,
                spec,
                tasks,
                summary=summary,
                rows_per_part=rows_per_part,
                commit_seconds=commit_seconds,
                progress=progress,
                workers=workers,
            )
        index = finish_output(layout, schema, identity, drop=drop)
        _account(summary, index, set(survey.files))
        summary.wall_time_s = round(time.time() - t0, 3)
        _write_summaries(out, summary, labels_schema(label_cols, types, survey.label_source))
    return summary


def _open_output(layout: Layout, schema: pa.Schema, identity: dict) -> OutputIndex:
    """What the output holds already (its footers), with the temporary folder cleared of a stopped run's part."""
    index = load_index(layout, schema, identity)
    check_tmp_folder(layout)
    layout.tmp.mkdir(parents=True, exist_ok=True)
    for tmp in layout.tmp.glob("*.tmp"):
        tmp.unlink()  # a part that was being written when a run stopped
    return index


def _write_summaries(out: Path, summary: EncodeSummary, labels: dict) -> None:
    """latents.summary.json (what this run did, and the whole output) and latents.labels_schema.json."""
    with atomic_file(summary_path(out)) as tmp:
        tmp.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    with atomic_file(labels_schema_path(out)) as tmp:
        tmp.write_text(json.dumps(labels, indent=2) + "\n")


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
        tasks.append(FileTask(p, rel, lab, offset, size=size, mtime_ns=mtime_ns))
    if unknown:
        said = ", ".join(f"{k or '(empty)'} (e.g. {v})" for k, v in sorted(unknown.items())[:5])
        raise RuntimeError(
            f"no hardware offset for the {offset_column} value(s) {said}: the offsets were fitted on recorders "
            f"{sorted(offsets or {})}; encode these into another --out, which fits offsets for every recorder"
        )
    drop_files(index, stale, layout, identity=identity)
    if relabel:
        log.info("%d files have new labels: their rows are given them (no encoding needed)", len(summary.relabelled))
        relabel_files(
            index, relabel, layout, identity=identity, labels=survey.labels, label_columns=survey.label_columns
        )
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
            write_part(
                job.layout.parts,
                job.layout.tmp,
                tables,
                entries=dict(entries),
                schema=job.schema,
                identity=job.identity,
            )
            tables.clear()
            entries.clear()
        last_commit = time.monotonic()

    with file_progress(len(tasks), "Encoding", enabled=progress) as advance:
        for result in encode_stream(encoder, loader, spec, schema=job.schema, label_columns=job.label_columns):
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
    if LIBC is not None and sys.platform == "linux":
        LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a killed run leaves no orphan decoders


def _fixed_mmap_threshold(nbytes: int = 128 * 1024) -> None:
    """Have glibc return freed blocks over ``nbytes`` to the OS at once.

    glibc raises its mmap threshold as big blocks are freed; after that, audio
    blocks and spectrograms come from a heap that fragments, and a decoding
    process grew with the file's length (+9% RSS from 10 min to 2 h). Not in the
    model's process: there the mmap calls cost ~20% of the speed.
    """
    if LIBC is not None:
        LIBC.mallopt(-3, nbytes)  # -3: M_MMAP_THRESHOLD


def _as_is(item):
    return item
