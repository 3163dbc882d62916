"""The hardware check: can the recorder be told from the descriptors, and does removing its offset help?

Balanced accuracy of predicting the recorder (which a soundscape descriptor
should not carry) and the target (which it should) from the moments
descriptors, without and with the recorder offsets of
:mod:`ecovae.recorder_offsets`, the offsets fitted on the training folds only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score

from ecovae.descriptors import MixtureMoments
from ecovae.evaluate import linear_classifier, make_folds
from ecovae.logmel_cache import cache_survey
from ecovae.model import SoundscapeVAE
from ecovae.progress import file_progress
from ecovae.recorder_offsets import RecorderOffsets, spectra_table
from ecovae.spectrogram import SpectrogramConfig
from ecovae.survey import Survey, as_survey

log = logging.getLogger(__name__)


@torch.no_grad()
def _moments(model: SoundscapeVAE, clips: list[list], offsets: list[np.ndarray] | None) -> np.ndarray:
    out = []
    for i, cs in enumerate(clips):
        frames = []
        for c in cs:
            x = c[0 : c.shape[0]]  # a cached clip is read from disk here, one at a time
            x = x if offsets is None else x - torch.as_tensor(offsets[i])
            mu, logvar = model.encode(x[None, None])
            frames.append(torch.cat([mu[0], logvar[0]], 1).numpy())
        out.append(np.concatenate(frames))
    return MixtureMoments().fit_transform(out)


def hardware_check(
    model: SoundscapeVAE,
    spec: SpectrogramConfig,
    recordings: Survey | Path | str,
    *,
    recorder: str,
    target: str,
    labels_csv: Path | None = None,
    n_splits: int = 5,
    seed: int = 0,
    cache: Path | str | None = None,
    progress: bool = False,
) -> dict:
    """Balanced accuracy of predicting ``recorder`` and ``target`` from moments descriptors, without and with correction.

    The log-mel comes from the training cache (:mod:`ecovae.logmel_cache`): after training on the
    same recordings, nothing is decoded again.
    """
    model = model.eval()
    recordings = cache_survey(as_survey(recordings, labels_csv, spec), cache)
    clips = [r.clips for r in recordings]
    spectra = np.stack([(s / n).astype(np.float32) for n, s, _ in (r.statistics() for r in recordings)])
    meta = pd.DataFrame([{"path": r.relpath, **r.labels} for r in recordings])
    for col in (recorder, target):
        if col not in meta.columns:
            raise ValueError(f"no label column {col!r} for the hardware check")
    folds, keep = make_folds(meta, target, None, n_splits=n_splits, seed=seed)
    rec = meta[recorder].astype(str).to_numpy()[keep]
    y = folds.y
    clips = [clips[i] for i in keep]
    spectra = spectra[keep]
    pred = {
        k: np.empty(len(y), dtype=object)
        for k in ("recorder_plain", "target_plain", "recorder_corrected", "target_corrected")
    }
    # every fold encodes the survey again with its own offsets: the slow part, so it shows progress
    with file_progress(len(folds.splits) + 1, "Hardware check", enabled=progress, unit="encoding passes") as advance:
        plain = _moments(model, clips, None)
        advance()
        for tr, te in folds.splits:
            corr = RecorderOffsets().fit(spectra_table(spectra[tr], rec[tr]))
            corrected = _moments(model, clips, [corr.offset(r) for r in rec])
            for name, X in (("plain", plain), ("corrected", corrected)):
                pred[f"recorder_{name}"][te] = linear_classifier().fit(X[tr], rec[tr]).predict(X[te])
                pred[f"target_{name}"][te] = linear_classifier().fit(X[tr], y[tr]).predict(X[te])
            advance()
    full = RecorderOffsets().fit(spectra_table(spectra, rec))
    return {
        "recorder_column": recorder,
        "target": target,
        "unit": "recording",  # each recording's moments descriptor, whatever the evaluation's units
        "n_recordings": len(y),
        "n_folds": len(folds.splits),
        "recorder_balanced_accuracy": {
            "without": balanced_accuracy_score(rec, pred["recorder_plain"].astype(str)),
            "with": balanced_accuracy_score(rec, pred["recorder_corrected"].astype(str)),
        },
        "target_balanced_accuracy": {
            "without": balanced_accuracy_score(y, pred["target_plain"].astype(str)),
            "with": balanced_accuracy_score(y, pred["target_corrected"].astype(str)),
        },
        "recorder_chance": 1 / len(set(rec)),
        "target_chance": 1 / len(set(y)),
        "offsets": {r: o.tolist() for r, o in full.offsets_.items()},
    }
