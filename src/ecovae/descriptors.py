"""Soundscape descriptors: from per-frame posteriors to one description per recording.

A recording is a sequence of frame posteriors N(mu_t, sigma_t^2). Descriptors
are scikit-learn estimators over a *list of recordings*, each an array of
shape (frames, 2 * latent_dim) holding [mu | log var], so they go into a
``Pipeline`` and through ``cross_validate`` like any transformer:

* :class:`TimeAveraged`: the mean of mu over frames (the baseline of earlier
  learned-feature work);
* :class:`MixtureMoments`: the recording as the equal-weight mixture
  (1/T) sum_t N(mu_t, sigma_t^2), by its mean and variance per dimension;
* :class:`MixtureSampleClassifier`: a classifier trained on samples drawn from
  each recording's mixture, whose predictions are averaged over samples, so
  multi-modal and periodic structure over time is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from ecovae.encode import RESERVED


@dataclass
class Recordings:
    """Frames grouped by recording: posteriors (list of (T, 2D) arrays) and one row of labels each."""

    frames: list[np.ndarray]
    meta: pd.DataFrame  # one row per recording: path, labels, n_frames, start_time
    latent_dim: int


def read_latents(path) -> pd.DataFrame:
    """The per-frame latents written by ``ecovae encode`` (a Parquet file or dataset folder).

    A missing, unreadable or empty one is an error that names it.
    """
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such latents file or folder (make it with 'ecovae encode')")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable Parquet latents file ({e})") from None
    if table.num_rows == 0:
        raise ValueError(f"{path} holds no frames (0 rows): encoding skipped every file? "
                         "see the .summary.json beside it")  # fmt: skip
    return table.to_pandas()


def group_recordings(frames: pd.DataFrame) -> Recordings:
    """Group a latents table by recording (path), frames in time order."""
    mu_cols = [c for c in frames.columns if c.startswith("mu_")]
    lv_cols = [c for c in frames.columns if c.startswith("logvar_")]
    if not mu_cols or len(mu_cols) != len(lv_cols):
        raise ValueError("not a latents table: needs mu_* and logvar_* columns (made by 'ecovae encode')")
    frames = frames.sort_values(["path", "frame_in_recording"], kind="stable")
    values = frames[mu_cols + lv_cols].to_numpy(np.float32)
    paths = frames["path"].to_numpy()
    starts = np.flatnonzero(np.r_[True, paths[1:] != paths[:-1]])
    ends = np.r_[starts[1:], len(paths)]
    fixed = set(RESERVED) | set(mu_cols) | set(lv_cols)
    label_cols = [c for c in frames.columns if c not in fixed]
    meta = frames.iloc[starts][["path", *label_cols, "start_time"]].reset_index(drop=True)
    meta["n_frames"] = ends - starts
    return Recordings([values[s:e] for s, e in zip(starts, ends, strict=True)], meta, len(mu_cols))


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = x.shape[1] // 2
    return x[:, :d], x[:, d:]


class TimeAveraged(TransformerMixin, BaseEstimator):
    """Mean of mu over a recording's frames: (n_recordings, D)."""

    def fit(self, X, y=None):
        self.n_features_out_ = _split(X[0])[0].shape[1]
        return self

    def transform(self, X) -> np.ndarray:
        return np.stack([_split(r)[0].mean(0) for r in X])


class MixtureMoments(TransformerMixin, BaseEstimator):
    """Mean and variance per dimension of the mixture (1/T) sum_t N(mu_t, sigma_t^2): (n, 2D)."""

    def fit(self, X, y=None):
        self.n_features_out_ = _split(X[0])[0].shape[1] * 2
        return self

    def transform(self, X) -> np.ndarray:
        out = []
        for r in X:
            mu, logvar = _split(r.astype(np.float64))
            mean = mu.mean(0)
            var = (np.exp(logvar) + mu**2).mean(0) - mean**2  # law of total variance
            out.append(np.concatenate([mean, np.maximum(var, 0.0)]))
        return np.stack(out).astype(np.float32)


def sample_mixture(recording: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws from a recording's equal-weight mixture of frame posteriors: (n, D)."""
    mu, logvar = _split(recording)
    k = rng.integers(0, len(mu), size=n)  # a frame, uniformly
    return mu[k] + rng.standard_normal((n, mu.shape[1])).astype(np.float32) * np.exp(0.5 * logvar[k])


class MixtureSampleClassifier(ClassifierMixin, BaseEstimator):
    """Fit ``estimator`` on samples from each recording's mixture; average its probabilities over samples."""

    def __init__(self, estimator=None, n_samples: int = 64, random_state: int = 0):
        self.estimator = estimator
        self.n_samples = n_samples
        self.random_state = random_state

    def _samples(self, X, rng) -> np.ndarray:
        return np.concatenate([sample_mixture(r, self.n_samples, rng) for r in X])

    def fit(self, X, y):
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y)
        rng = np.random.default_rng(self.random_state)
        base = self.estimator if self.estimator is not None else LogisticRegression(max_iter=2000)
        self.estimator_ = clone(base).fit(self._samples(X, rng), np.repeat(y, self.n_samples))
        self.classes_ = self.estimator_.classes_
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        rng = np.random.default_rng(self.random_state + 1)
        p = self.estimator_.predict_proba(self._samples(X, rng))
        return p.reshape(len(X), self.n_samples, -1).mean(1)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]


DESCRIPTORS = ("mean", "moments", "mixture")


def describe(recs: Recordings, kind: str, n_samples: int = 64, seed: int = 0) -> pd.DataFrame:
    """One row per recording (``mean``, ``moments``) or per mixture sample (``mixture``), with labels."""
    d = recs.latent_dim
    if kind == "mean":
        values, names = TimeAveraged().fit_transform(recs.frames), [f"mean_{i:03d}" for i in range(d)]
        meta = recs.meta
    elif kind == "moments":
        values = MixtureMoments().fit_transform(recs.frames)
        names = [f"mean_{i:03d}" for i in range(d)] + [f"var_{i:03d}" for i in range(d)]
        meta = recs.meta
    elif kind == "mixture":
        rng = np.random.default_rng(seed)
        values = np.concatenate([sample_mixture(r, n_samples, rng) for r in recs.frames])
        names = [f"z_{i:03d}" for i in range(d)]
        meta = recs.meta.loc[recs.meta.index.repeat(n_samples)].reset_index(drop=True)
        meta["sample"] = np.tile(np.arange(n_samples), len(recs.frames))
    else:
        raise ValueError(f"unknown descriptor {kind!r}; choose from {DESCRIPTORS}")
    return pd.concat([meta.reset_index(drop=True), pd.DataFrame(values, columns=names)], axis=1)
