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
from ecovae.model import SoundscapeVAE
from ecovae.recorder_offsets import RecorderOffsets, spectra_table
from ecovae.spectrogram import SpectrogramConfig
from ecovae.survey import open_survey

log = logging.getLogger(__name__)


@torch.no_grad()
def _moments(model: SoundscapeVAE, clips: list[list[torch.Tensor]], offsets: list[np.ndarray] | None) -> np.ndarray:
    out = []
    for i, cs in enumerate(clips):
        frames = []
        for c in cs:
            x = c if offsets is None else c - torch.as_tensor(offsets[i])
            mu, logvar = model.encode(x[None, None])
            frames.append(torch.cat([mu[0], logvar[0]], 1).numpy())
        out.append(np.concatenate(frames))
    return MixtureMoments().fit_transform(out)


def hardware_check(
    model: SoundscapeVAE,
    spec: SpectrogramConfig,
    root: Path,
    labels_csv: Path | None,
    recorder: str,
    target: str,
    n_splits: int = 5,
    seed: int = 0,
) -> dict:
    """Balanced accuracy of predicting ``recorder`` and ``target`` from moments descriptors, without and with correction."""
    model = model.eval()
    survey = open_survey(root, labels_csv, spec)
    paths, labs, clips = [], [], []
    for rec, cs in survey.recordings():
        paths.append(rec.relpath)
        labs.append(rec.labels)
        clips.append([c.logmel for c in cs])
    spectra = np.stack([torch.cat(cs).mean(0).numpy() for cs in clips])
    meta = pd.DataFrame([{"path": p, **lab} for p, lab in zip(paths, labs, strict=True)])
    for col in (recorder, target):
        if col not in meta.columns:
            raise ValueError(f"no label column {col!r} for the hardware check")
    folds, keep = make_folds(meta, target, None, n_splits, seed)
    rec = meta[recorder].astype(str).to_numpy()[keep]
    y = folds.y
    clips = [clips[i] for i in keep]
    spectra = spectra[keep]
    plain = _moments(model, clips, None)
    pred = {
        k: np.empty(len(y), dtype=object)
        for k in ("recorder_plain", "target_plain", "recorder_corrected", "target_corrected")
    }
    for tr, te in folds.splits:
        corr = RecorderOffsets().fit(spectra_table(spectra[tr], rec[tr]))
        corrected = _moments(model, clips, [corr.offset(r) for r in rec])
        for name, X in (("plain", plain), ("corrected", corrected)):
            pred[f"recorder_{name}"][te] = linear_classifier().fit(X[tr], rec[tr]).predict(X[te])
            pred[f"target_{name}"][te] = linear_classifier().fit(X[tr], y[tr]).predict(X[te])
    full = RecorderOffsets().fit(spectra_table(spectra, rec))
    return {
        "recorder_column": recorder,
        "target": target,
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
