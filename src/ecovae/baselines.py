"""Baseline feature sets, one row per recording, to score beside the VAE's descriptors.

* ``indices``: scikit-maad's standard temporal and spectral alpha acoustic
  indices (the features ecologists use most), computed per 59.904 s clip on
  the 48 kHz audio and averaged over the clips of a recording;
* ``logmel``: the mean log-mel spectrum (the "no learning" baseline, from the
  same spectrogram the VAE sees);
* ``birdnet``: BirdNET embeddings (1024-d per 3 s window, averaged), when the
  optional extra is installed.

Files the encoder skipped are skipped here too (the same reader).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ecovae.audio import BadAudio, Recording, iter_blocks, open_recording
from ecovae.spectrogram import SpectrogramConfig, mean_logmel

log = logging.getLogger(__name__)

BASELINES = ("indices", "logmel", "birdnet")


def _clip_audio(rec: Recording, spec: SpectrogramConfig):
    """The recording's 48 kHz audio, a clip at a time (the last one shorter)."""
    buffer = np.zeros(0, np.float32)
    for block in iter_blocks(rec, spec.sample_rate):
        buffer = np.concatenate([buffer, block])
        while len(buffer) >= spec.clip_samples:
            yield buffer[: spec.clip_samples]
            buffer = buffer[spec.clip_samples :]
    if len(buffer) >= spec.frame_samples:
        yield buffer


def acoustic_indices(rec: Recording, spec: SpectrogramConfig = SpectrogramConfig(),
                     max_seconds: float | None = None) -> pd.Series | None:  # fmt: skip
    """scikit-maad's temporal and spectral alpha indices, averaged over clips (of the first ``max_seconds``)."""
    from maad import features, sound

    rows = []
    for i, audio in enumerate(_clip_audio(rec, spec)):
        if max_seconds is not None:
            audio = audio[: max(0, int((max_seconds - i * spec.clip_seconds) * spec.sample_rate))]
            if len(audio) < spec.frame_samples:
                break
        x = audio.astype(np.float64)
        fs = spec.sample_rate
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # maad warns on quiet and constant passages
            temporal = features.all_temporal_alpha_indices(x, fs)
            sxx, tn, fn, _ = sound.spectrogram(x, fs, nperseg=1024, noverlap=512)
            spectral, _ = features.all_spectral_alpha_indices(
                sxx, tn, fn, flim_low=[0, 1500], flim_mid=[1500, 8000], flim_hi=[8000, fs / 2]
            )
        rows.append(pd.concat([temporal.iloc[0], spectral.iloc[0]]).astype(float))
    return pd.concat(rows, axis=1).mean(axis=1) if rows else None


def birdnet_embedding(rec: Recording, spec: SpectrogramConfig = SpectrogramConfig()) -> np.ndarray | None:
    from ecovae import birdnet

    chunks = [birdnet.embed(a) for a in _clip_audio(rec, spec)]
    e = np.concatenate(chunks) if chunks else np.zeros((0, birdnet.EMBEDDING_DIM))
    return e.mean(0).astype(np.float32) if len(e) else None


FEATURES = {"indices": acoustic_indices, "logmel": mean_logmel, "birdnet": birdnet_embedding}


def baseline_features(root: Path | str, paths: list[str], kinds=("indices", "logmel"),
                      spec: SpectrogramConfig = SpectrogramConfig(),
                      indices_seconds: float | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """name -> (len(paths), k) array, rows in the order of ``paths``; NaN rows for unreadable files.

    ``indices_seconds`` limits the acoustic indices to the first seconds of each
    recording (scikit-maad's region-of-interest indices cost about 0.1 s per second of audio).
    """
    from ecovae import birdnet

    root = Path(root)
    kinds = [k for k in kinds if k != "birdnet" or birdnet.available()]
    columns: dict[str, list] = {k: [] for k in kinds}
    for rel in paths:
        try:
            rec = open_recording(root / rel, root)
            for k in kinds:
                limit = {"max_seconds": indices_seconds} if k == "indices" else {}
                columns[k].append(FEATURES[k](rec, spec, **limit))
        except BadAudio as e:
            log.warning("baselines: skipped %s", e)
            for k in kinds:
                columns[k].append(None)
    out = {}
    for k, rows in columns.items():
        width = next((len(r) for r in rows if r is not None), 0)
        out[k] = np.stack([np.full(width, np.nan) if r is None else np.asarray(r, float) for r in rows])
    return out
