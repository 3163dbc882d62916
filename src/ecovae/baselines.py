"""Baseline feature sets, per window of each recording, keyed like the latents (path, frame_offset_s).

So that the VAE and every baseline are compared on the same footing (the same
units of analysis, the same descriptors, the same folds), a baseline is a
table of windows, not one row per recording:

* ``logmel``: the frame's mean log-mel per band, written by ``ecovae encode``
  beside each posterior (see :mod:`ecovae.latents`): nothing to compute here;
* ``indices``: scikit-maad's standard temporal and spectral alpha acoustic
  indices (the features ecologists use most) per window of ``INDICES_FRAMES``
  frames (15.36 s) on the 48 kHz audio;
* ``birdnet``: BirdNET embeddings, one 1024-d row per 3 s window, when the
  optional extra is installed.

Windows are computed once and kept in a cache (one Parquet file per feature
set), reused while a file's size and modification time and the settings stay
the same. Files the encoder skipped are skipped here too (the same reader).
"""

from __future__ import annotations

import logging
import os
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from ecovae.audio import BadAudio, Recording, iter_blocks
from ecovae.descriptors import Units, group_units
from ecovae.files import file_stats, read_file_cache, write_file_cache
from ecovae.latents import RESERVED, feature_columns, is_feature_column
from ecovae.spectrogram import SpectrogramConfig
from ecovae.survey import Survey, as_survey

log = logging.getLogger(__name__)

BASELINES = ("indices", "logmel", "birdnet")
FROM_AUDIO = ("indices", "birdnet")  # logmel comes with the latents
INDICES_FRAMES = 10  # 15.36 s: long enough for the indices' own statistics, short enough to see a day change


def _windows(rec: Recording, rate: int, samples: int, min_samples: int, max_seconds: float | None = None):
    """(offset in seconds, audio) for consecutive windows of the audio at ``rate``; the last may be shorter."""
    buffer, offset = np.zeros(0, np.float32), 0
    limit = None if max_seconds is None else int(max_seconds * rate)
    for block in iter_blocks(rec, rate):
        buffer = np.concatenate([buffer, block])
        while len(buffer) >= samples:
            if limit is not None and offset + samples > limit:
                break
            yield offset / rate, buffer[:samples]
            buffer, offset = buffer[samples:], offset + samples
        if limit is not None and offset + len(buffer) >= limit:
            buffer = buffer[: max(0, limit - offset)]
            break
    if len(buffer) >= min_samples:
        yield offset / rate, buffer


def acoustic_indices(audio: np.ndarray, sample_rate: int = 48_000) -> pd.Series:
    """scikit-maad's temporal and spectral alpha indices of one window of audio, by name."""
    from maad import features, sound

    x = audio.astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # maad warns on quiet and constant passages
        temporal = features.all_temporal_alpha_indices(x, sample_rate)
        sxx, tn, fn, _ = sound.spectrogram(x, sample_rate, nperseg=1024, noverlap=512)
        spectral, _ = features.all_spectral_alpha_indices(
            sxx, tn, fn, flim_low=[0, 1500], flim_mid=[1500, 8000], flim_hi=[8000, sample_rate / 2]
        )
    return pd.concat([temporal.iloc[0], spectral.iloc[0]]).astype(float)


def recording_windows(
    rec: Recording, kind: str, spec: SpectrogramConfig = SpectrogramConfig(), *, indices_seconds: float | None = None
):
    """(offsets, (n, k) values, names) of one recording."""
    if kind == "indices":
        rows, offsets = [], []
        windows = _windows(
            rec, spec.sample_rate, INDICES_FRAMES * spec.frame_samples, spec.frame_samples, max_seconds=indices_seconds
        )
        for offset, audio in windows:
            rows.append(acoustic_indices(audio, spec.sample_rate))
            offsets.append(offset)
        if not rows:
            raise BadAudio(rec.path, f"no window for the indices: under one frame ({spec.frame_seconds:.3f} s) read")
        return offsets, np.stack([r.to_numpy() for r in rows]), list(rows[0].index)
    if kind == "birdnet":
        from ecovae import birdnet

        offsets, chunks = [], []
        for offset, audio in _windows(rec, birdnet.SAMPLE_RATE, 20 * birdnet.WINDOW, birdnet.WINDOW):
            e = birdnet.embed(audio)
            chunks.append(e)
            offsets += [offset + i * birdnet.WINDOW / birdnet.SAMPLE_RATE for i in range(len(e))]
        values = np.concatenate(chunks) if chunks else np.zeros((0, birdnet.EMBEDDING_DIM))
        return offsets, values, [f"birdnet_{i}" for i in range(values.shape[1])]
    raise ValueError(f"unknown baseline {kind!r}; choose from {BASELINES}")


def _settings(kind: str, spec: SpectrogramConfig, indices_seconds: float | None) -> dict:
    if kind == "indices":
        return {"kind": kind, "window_s": INDICES_FRAMES * spec.frame_seconds, "max_seconds": indices_seconds}
    return {"kind": kind, "window_s": 3.0}


def baseline_windows(
    recordings: Survey | Path | str,
    paths: list[str],
    kind: str,
    *,
    cache: Path | str | None = None,
    spec: SpectrogramConfig = SpectrogramConfig(),
    indices_seconds: float | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> pd.DataFrame:
    """One row per window: path, frame_offset_s and ``{kind}_000...``; windows with non-finite values left out.

    With ``cache`` (a folder), windows are read from ``cache/{kind}.parquet`` for files whose
    size and modification time match, computed for the others, and the cache rewritten.
    ``indices_seconds`` limits the indices to each recording's first seconds (scikit-maad
    costs about 0.1 s per second of audio). The indices run in ``workers`` processes
    (default: one per core); BirdNET in this one (its interpreter has its own threads).
    """
    root = recordings.root if isinstance(recordings, Survey) else Path(recordings)
    settings = _settings(kind, spec, indices_seconds)
    cache_file = Path(cache) / f"{kind}.parquet" if cache else None
    stats = file_stats(root, paths)  # a file gone: the survey reader says so
    cached = read_file_cache(cache_file, "ecovae_baseline", settings, stats=stats) if cache_file else pd.DataFrame()
    fresh = set(cached["path"]) if len(cached) else set()
    todo = [p for p in paths if p not in fresh]
    frames, names = [cached], None
    survey = as_survey(recordings, spec=spec, rels=todo)
    read = partial(recording_windows, kind=kind, spec=spec, indices_seconds=indices_seconds)
    # the indices in worker processes; BirdNET in this one (its interpreter has its own threads)
    n_workers = (workers or os.cpu_count() or 1) if kind == "indices" and len(todo) >= 8 else 1
    for rec, (offsets, values, names_) in survey.read(read, workers=n_workers, progress=kind if progress else None):
        names = names or names_
        df = pd.DataFrame(values.astype(np.float32), columns=feature_columns(f"{kind}_", values.shape[1]))
        df.insert(0, "path", rec.relpath)
        df.insert(1, "frame_offset_s", np.asarray(offsets, float))
        df["_size"], df["_mtime_ns"] = stats[rec.relpath]
        frames.append(df)
    table = (
        pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else pd.DataFrame()
    )
    if cache_file is not None and todo and len(table):
        write_file_cache(cache_file, table, "ecovae_baseline", settings=settings, meta={"ecovae_names": names or []})
    if table.empty:
        return table
    table = table[table["path"].isin(set(paths))].drop(columns=["_size", "_mtime_ns"])
    values = table[[c for c in table.columns if c.startswith(f"{kind}_")]].to_numpy()
    finite = np.isfinite(values).all(1)
    if not finite.all():
        log.warning("baselines: %s left out %d windows with non-finite values", kind, int((~finite).sum()))
    return table[finite].reset_index(drop=True)


def baseline_units(windows: pd.DataFrame, latents: pd.DataFrame, kind: str, *, unit=None, window=None) -> Units:
    """A baseline's windows as units of analysis, with the labels and times of the latents' recordings."""
    labels = [c for c in latents.columns if c not in RESERVED and not is_feature_column(c)]
    per_recording = latents[["path", "start_time", *labels]].drop_duplicates("path")
    table = windows.merge(per_recording, on="path", how="inner")
    if "start_time" in table.columns:
        table["frame_time"] = pd.to_datetime(table["start_time"]) + pd.to_timedelta(table["frame_offset_s"], unit="s")
    return group_units(table, unit, window, features=kind)


def baseline_sets(
    latents: pd.DataFrame,
    kinds,
    recordings: Survey | Path | str | None,
    *,
    cache: Path | str | None = None,
    unit=None,
    window=None,
    spec: SpectrogramConfig = SpectrogramConfig(),
    indices_seconds: float | None = None,
    progress: bool = False,
) -> dict[str, Units]:
    """name -> the baseline's units (the same units as the latents'): log-mel from the latents themselves,
    the others from the survey's audio (``recordings``: a :class:`~ecovae.survey.Survey` or a folder; computed
    once, cached in ``cache``)."""
    from ecovae import birdnet

    unknown = set(kinds) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
    out = {}
    for kind in kinds:
        if kind == "logmel":
            if any(c.startswith("logmel_") for c in latents.columns):
                out[kind] = group_units(latents, unit, window, features="logmel")
            else:
                log.warning("log-mel baseline skipped: these latents were encoded without it (re-encode to add it)")
            continue
        if kind == "birdnet" and not birdnet.available():
            log.warning("BirdNET baseline skipped: install the extra, pip install 'ecovae[birdnet]'")
            continue
        if recordings is None:
            log.warning("%s baseline skipped: it needs the audio (--recordings or --model)", kind)
            continue
        paths = latents["path"].drop_duplicates().tolist()
        windows = baseline_windows(
            recordings, paths, kind, cache=cache, spec=spec, indices_seconds=indices_seconds, progress=progress
        )
        if windows.empty:
            log.warning("%s baseline skipped: no file gave a window", kind)
            continue
        out[kind] = baseline_units(windows, latents, kind, unit=unit, window=window)
    return out
