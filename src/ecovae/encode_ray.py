"""Encoding on a Ray cluster (``pip install ecovae[distributed]``): the same parts as the local engine, spread
over workers.

Files are grouped into chunks by size on disk; each chunk is one Ray task that encodes its files and writes one
part named after them (:func:`ecovae.parts.write_part`). A task whose worker dies is retried once; the retry
writes the part of the same name, so redone work replaces and never duplicates. Files of a chunk that fails twice
are counted as skipped, with the error, like any unreadable file. Each worker process loads the model once and
keeps it for the tasks that follow. On a multi-node cluster the recordings, the run folder and the output folder
must be on storage that every node sees (a cluster file system).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ecovae.file_encoding import ClipStream, EncodeSummary, FileResult, FileTask, Job, encode_stream, record
from ecovae.parts import (
    write_part,
)
from ecovae.precision import Encoder, choose
from ecovae.run import load_model
from ecovae.spectrogram import SpectrogramConfig

log = logging.getLogger(__name__)

_MODELS: dict = {}  # in each worker process: the model of the last job, loaded once


def _encoder(job: Job) -> tuple[Encoder, SpectrogramConfig]:
    key = (str(job.run_dir), job.identity["weights"], job.device, job.precision)
    if key not in _MODELS:
        model, spec = load_model(job.run_dir)
        _MODELS.clear()
        _MODELS[key] = (choose(job.precision, model, job.run_dir, device=job.device)[1], spec)
    return _MODELS[key]


def encode_chunk(job: Job, tasks: list[FileTask]) -> list[FileResult]:
    """One Ray task: encode ``tasks`` and commit them as one part; the results without their rows."""
    encoder, spec = _encoder(job)
    stream = ClipStream(tasks, job.root, spec, job.batch_size)
    results = list(encode_stream(encoder, stream, spec, schema=job.schema, label_columns=job.label_columns))
    done = [r for r in results if r.table is not None]
    if done:
        write_part(
            job.layout.parts,
            job.layout.tmp,
            [r.table for r in done],
            entries={r.rel: r.entry() for r in done},
            schema=job.schema,
            identity=job.identity,
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
    *,
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
