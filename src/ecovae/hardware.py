"""Hardware correction: recorders differ in frequency response, which shifts the log-mel spectrum.

Each recorder (or recorder model) gets an offset: its mean log-mel spectrum
minus the survey's (the mean over recorders, so a recorder with more files
does not weigh more). Removing the offset before encoding is a linear
transformation of the input. :func:`hardware_check` measures how well the
recorder and the target can be predicted from the descriptors with and
without it, fitting the offsets on the training folds only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ecovae.audio import BadAudio, discover, open_recording
from ecovae.descriptors import MixtureMoments
from ecovae.model import SoundscapeVAE
from ecovae.spectrogram import SpectrogramConfig, iter_clips, mean_logmel

log = logging.getLogger(__name__)


class RecorderOffsets(TransformerMixin, BaseEstimator):
    """Fit on per-recording mean log-mel spectra (n, mels) and their recorders; subtract each recorder's offset."""

    def fit(self, spectra: np.ndarray, recorders) -> RecorderOffsets:
        recorders = np.asarray(recorders).astype(str)
        means = {r: spectra[recorders == r].mean(0) for r in sorted(set(recorders))}
        survey = np.mean(list(means.values()), axis=0)
        self.offsets_ = {r: (m - survey).astype(np.float32) for r, m in means.items()}
        return self

    def offset(self, recorder: str) -> np.ndarray:
        """A recorder never seen in fitting gets no correction."""
        return self.offsets_.get(str(recorder), np.zeros_like(next(iter(self.offsets_.values()))))

    def transform(self, spectra: np.ndarray, recorders) -> np.ndarray:
        return spectra - np.stack([self.offset(r) for r in np.asarray(recorders).astype(str)])


def fit_survey_offsets(root: Path, labels_csv: Path | None, column: str, spec: SpectrogramConfig) -> RecorderOffsets:
    """Recorder offsets from every readable recording of a survey (for ``ecovae encode --correct-hardware``)."""
    files, columns, labels = discover(root, labels_csv)
    if column not in columns:
        raise ValueError(f"no label column {column!r} to correct by; the labels have {columns}")
    spectra, recorders = [], []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            m = mean_logmel(open_recording(path, root), spec)
        except BadAudio as e:
            log.warning("skipped %s", e)
            continue
        if m is not None and labels.get(rel, {}).get(column):
            spectra.append(m)
            recorders.append(labels[rel][column])
    if not spectra:
        raise ValueError(f"no readable recording has a {column!r} label")
    return RecorderOffsets().fit(np.stack(spectra), recorders)


def survey_spectra(root: Path, labels_csv: Path | None, spec: SpectrogramConfig):
    """Clips and mean log-mel spectrum of every readable recording: (paths, labels, clips, means)."""
    files, _, labels = discover(root, labels_csv)
    paths, labs, clips, means = [], [], [], []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            cs = [c.logmel for c in iter_clips(open_recording(path, root), spec)]
        except BadAudio as e:
            log.warning("skipped %s", e)
            continue
        if cs:
            paths.append(rel)
            labs.append(labels.get(rel, {}))
            clips.append(cs)
            means.append(torch.cat(cs).mean(0).numpy())
    return paths, labs, clips, np.stack(means)


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


def _logreg():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced"))


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
    import pandas as pd

    from ecovae.evaluate import make_folds

    model = model.eval()
    paths, labs, clips, spectra = survey_spectra(root, labels_csv, spec)
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
        corr = RecorderOffsets().fit(spectra[tr], rec[tr])
        corrected = _moments(model, clips, [corr.offset(r) for r in rec])
        for name, X in (("plain", plain), ("corrected", corrected)):
            pred[f"recorder_{name}"][te] = _logreg().fit(X[tr], rec[tr]).predict(X[te])
            pred[f"target_{name}"][te] = _logreg().fit(X[tr], y[tr]).predict(X[te])
    full = RecorderOffsets().fit(spectra, rec)
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
