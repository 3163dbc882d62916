"""Soundscape descriptors: from per-frame posteriors to one description per unit of analysis.

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

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.utils.validation import check_array, check_is_fitted

from ecovae.latents import FEATURE_SETS, RESERVED, is_feature_column

log = logging.getLogger(__name__)


@dataclass
class Units:
    """Frames grouped into units of analysis: one (T, 2D) array [mu | log var] per unit, one row of labels each.

    A unit is one recording by default, or the frames of every recording sharing
    some label values (site, recorder, ...), optionally within one time window
    (a day, say). Point features (the log-mel band means) have log var = -inf:
    variance 0, so every descriptor treats them as it treats posteriors.

    >>> import numpy as np, pandas as pd
    >>> units = Units([np.zeros((3, 4)), np.zeros((2, 4))], pd.DataFrame({"unit": ["a", "b"]}), latent_dim=2)
    >>> [len(f) for f in units.frames], units.features
    ([3, 2], 'vae')
    """

    frames: list[np.ndarray]
    meta: pd.DataFrame  # one row per unit: unit, path (recording units), labels constant within it, n_frames, ...
    latent_dim: int
    features: str = "vae"
    unplaced: dict[str, int] = field(default_factory=dict)  # path -> frames without a time (left out of windows)
    rows: list[np.ndarray] | None = None  # each unit's rows in the table it was grouped from


def parse_unit(unit: str | Sequence[str] | None) -> list[str]:
    """'site,recorder' -> ['site', 'recorder']; None, '' or 'recording' -> [] (one unit per recording); 'frame'
    -> ['path', 'frame_in_recording'] (each frame its own unit: for labels of frames)."""
    if unit is None:
        return []
    cols = [c.strip() for c in unit.split(",")] if isinstance(unit, str) else list(unit)
    cols = [c for c in cols if c and c != "recording"]
    return ["path", "frame_in_recording"] if cols == ["frame"] else cols


def _values(frames: pd.DataFrame, features: str) -> tuple[np.ndarray, int]:
    """(rows, 2D) [values | log var] of a feature set, and D."""
    if features not in FEATURE_SETS:
        stem = f"{features}_"
        cols = [c for c in frames.columns if c.startswith(stem) and is_feature_column(c)]
        lv_cols = None
    else:
        prefix, lv_prefix = FEATURE_SETS[features]
        cols = [c for c in frames.columns if c.startswith(prefix) and is_feature_column(c)]
        lv_cols = [c for c in frames.columns if lv_prefix and c.startswith(lv_prefix) and is_feature_column(c)]
        if lv_prefix and cols and not lv_cols:
            # moments and the mixture would quietly become point descriptors: a different method
            raise ValueError(
                f"the table has {prefix}* columns but no {lv_prefix}* (log-variance) columns: the posterior's spread "
                "is what the moments and mixture descriptors use; select them too when subsetting the latents"
            )
    if not cols:
        hint = " (re-encode with this version of ecovae to get them)" if features == "logmel" else ""
        raise ValueError(f"the table has no {features} feature columns{hint}")
    values = frames[cols].to_numpy(np.float32)
    if lv_cols:
        if len(lv_cols) != len(cols):
            raise ValueError(f"{features}: {len(cols)} value columns but {len(lv_cols)} log-variance columns")
        logvar = frames[lv_cols].to_numpy(np.float32)
    else:
        logvar = np.full_like(values, -np.inf)
    return np.concatenate([values, logvar], 1), len(cols)


def _in_windows(frames: pd.DataFrame, window: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The frames with the start of their time window (``window_start``), and those without a time counted per
    recording (left out, and logged)."""
    if "frame_time" not in frames.columns:
        raise ValueError("--window needs frame times; this table has no frame_time column")
    try:
        freq = pd.tseries.frequencies.to_offset(window)
        starts = pd.to_datetime(frames["frame_time"]).dt.floor(freq)
    except (ValueError, TypeError) as e:
        raise ValueError(f"--window {window!r} is not a fixed pandas frequency such as 1D, 12h, 30min ({e})") from None
    no_time = starts.isna().to_numpy()
    unplaced: dict[str, int] = {}
    if no_time.any():
        unplaced = frames.loc[no_time, "path"].value_counts().astype(int).to_dict()
        log.warning(
            "%d frames of %d recordings have no time (no date in the file name?): left out of the %s windows",
            int(no_time.sum()),
            len(unplaced),
            window,
        )
    return frames.assign(window_start=starts)[~no_time], unplaced


def group_units(
    frames: pd.DataFrame, unit: str | Sequence[str] | None = None, window: str | None = None, *, features: str = "vae"
) -> Units:
    """Group a per-frame table (latents, or a baseline's windows) into units of analysis, frames in time order.

    ``unit``: label columns whose values together make a unit (none: each recording);
    ``window``: a pandas frequency ("1D", "6h") cutting each unit by ``frame_time``
    (one unit per site and day, say). Frames without a time cannot be placed in a
    window: they are left out, counted in ``unplaced`` and logged, never silently.

    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> frames = pd.DataFrame({"path": ["a.wav"] * 3 + ["b.wav"] * 2, "frame_in_recording": [0, 1, 2, 0, 1],
    ...                        "site": ["s1"] * 3 + ["s2"] * 2, "mu_000": rng.normal(size=5),
    ...                        "mu_001": rng.normal(size=5), "logvar_000": np.zeros(5), "logvar_001": np.zeros(5)})
    >>> units = group_units(frames, "site")
    >>> list(units.meta["unit"]), [len(f) for f in units.frames], units.latent_dim
    (['s1', 's2'], [3, 2], 2)
    """
    keys = parse_unit(unit)
    missing = [c for c in keys if c not in frames.columns]
    if missing:
        labels = [c for c in frames.columns if c not in RESERVED and not is_feature_column(c)]
        raise ValueError(f"no label column {missing} to make units of; the table has {labels}")
    values, dim = _values(frames, features)
    order_cols = [c for c in ("path", "frame_in_recording", "frame_offset_s") if c in frames.columns]
    frames = frames.assign(_row=np.arange(len(frames)))
    unplaced: dict[str, int] = {}
    if window:
        frames, unplaced = _in_windows(frames, window)
        keys = [*keys, "window_start"]
    if not keys:
        keys = ["path"]
    if frames.empty:
        raise ValueError("no frames left to make units of (none has a time)")
    frames = frames.sort_values([*keys, *(["frame_time"] if window else []), *order_cols], kind="stable")
    codes = frames.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()
    starts_ = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts_[1:], len(codes)]
    rows = frames["_row"].to_numpy()
    labels = [
        c
        for c in frames.columns
        if c not in RESERVED and not is_feature_column(c) and c not in ("_row", "window_start", *keys)
    ]
    first = frames.iloc[starts_]
    meta = first[["path"] if keys == ["path"] else keys]
    meta = meta.reset_index(drop=True)
    if labels:  # keep the labels that are the same for every frame of a unit
        varying = frames.groupby(codes, sort=False)[labels].nunique(dropna=False).max() > 1
        kept = [c for c in labels if not varying[c]]
        meta = pd.concat([meta, first[kept].reset_index(drop=True)], axis=1)
    if "start_time" in frames.columns:
        meta["start_time"] = first["start_time"].to_numpy()
    if keys == ["path"]:
        meta.insert(0, "unit", meta["path"].astype(str))
    else:
        parts = [meta[k].dt.strftime("%Y-%m-%dT%H:%M") if k == "window_start" else meta[k].astype(str) for k in keys]
        meta.insert(0, "unit", parts[0].str.cat(parts[1:], sep="|") if len(parts) > 1 else parts[0])
        meta["n_recordings"] = frames.groupby(codes, sort=False)["path"].nunique().to_numpy()
        meta["first_recording"] = first["path"].to_numpy()  # to show (saliency) and to trace a unit
    meta["n_frames"] = ends - starts_
    spans = [rows[s:e] for s, e in zip(starts_, ends, strict=True)]
    return Units([values[r] for r in spans], meta, dim, features, unplaced=unplaced, rows=spans)


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = x.shape[1] // 2
    return x[:, :d], x[:, d:]


def as_units(X, n_features: int | None = None, who: str = "the descriptor") -> list[np.ndarray]:
    """Descriptors' input, checked: a list of units, each a (frames, 2D) array [mu | log var].

    A 2-D array is taken as units of one frame each (its rows), so the descriptors
    also work on per-frame tables. ``n_features``: the width seen when fitting.
    Log var may be -inf (point values: variance 0); NaN and other infinities are errors.
    """
    import scipy.sparse

    if scipy.sparse.issparse(X):
        raise TypeError(f"{who} does not take sparse input: pass a list of dense (frames, 2D) arrays")
    if isinstance(X, np.ndarray | pd.DataFrame) or (hasattr(X, "__array__") and not isinstance(X, Sequence)):
        rows = check_array(X, dtype=np.float64, ensure_all_finite=False)
        units = [r[None, :] for r in rows]
    elif isinstance(X, Sequence) and len(X) and all(np.ndim(u) == 1 for u in X):  # rows of a table
        units = [r[None, :] for r in check_array(X, dtype=np.float64, ensure_all_finite=False)]
    elif isinstance(X, Sequence) and len(X):
        units = [np.asarray(u, dtype=np.float64) for u in X]
    else:
        raise ValueError(
            "descriptors take a list of units, each a (frames, 2D) array [mu | log var], or a 2-D array of "
            f"single frames; got {type(X).__name__} of shape {np.shape(X)}"
        )
    widths = {u.shape[1] if u.ndim == 2 else -1 for u in units}
    if len(widths) != 1 or -1 in widths or any(len(u) == 0 for u in units):
        raise ValueError("every unit must be a non-empty (frames, 2D) array of one width [mu | log var]")
    width = widths.pop()
    bad = "Input contains NaN or infinity (only log var may be -inf, for point values)"
    if any(np.isnan(u).any() or (u == np.inf).any() for u in units):
        raise ValueError(bad)
    if n_features is not None and width != n_features:
        raise ValueError(f"X has {width} features, but {who} is expecting {n_features} features as input")
    if width < 2 or width % 2:
        raise ValueError(f"a unit's columns are [mu | log var], an even number; got n_features = {width}")
    if any(not np.isfinite(u[:, : width // 2]).all() for u in units):
        raise ValueError(bad)
    return units


class _Descriptor(TransformerMixin, BaseEstimator):
    prefixes: tuple[str, ...] = ()

    def fit(self, X, y=None):
        units = as_units(X, who=type(self).__name__)
        self.n_features_in_ = units[0].shape[1]
        return self

    def _units(self, X) -> list[np.ndarray]:
        check_is_fitted(self)
        return as_units(X, self.n_features_in_, type(self).__name__)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self)
        d = self.n_features_in_ // 2
        return np.asarray([f"{p}_{i:03d}" for p in self.prefixes for i in range(d)], dtype=object)


class TimeAveraged(_Descriptor):
    """Mean of mu over a unit's frames: (n_units, D).

    >>> import numpy as np
    >>> unit = np.array([[0.0, 2.0, 0.0, 0.0], [2.0, 4.0, 0.0, 0.0]])  # two frames: mu (2) | log var (2)
    >>> TimeAveraged().fit_transform([unit])
    array([[1., 3.]])
    """

    prefixes = ("mean",)

    def transform(self, X) -> np.ndarray:
        return np.stack([_split(u)[0].mean(0) for u in self._units(X)])


class MixtureMoments(_Descriptor):
    """Mean and variance per dimension of the mixture (1/T) sum_t N(mu_t, sigma_t^2): (n_units, 2D).

    >>> import numpy as np
    >>> unit = np.array([[0.0, 2.0, 0.0, 0.0], [2.0, 4.0, 0.0, 0.0]])  # two frames, unit variances
    >>> MixtureMoments().fit_transform([unit])  # mean, then variance: 1 within frames + 1 between them
    array([[1., 3., 2., 2.]], dtype=float32)
    """

    prefixes = ("mean", "var")

    def transform(self, X) -> np.ndarray:
        out = []
        for u in self._units(X):
            mu, logvar = _split(u)
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

    def _samples(self, units: list[np.ndarray], rng) -> np.ndarray:
        return np.concatenate([sample_mixture(u.astype(np.float32), self.n_samples, rng) for u in units])

    def fit(self, X, y):
        from sklearn.linear_model import LogisticRegression
        from sklearn.utils.multiclass import check_classification_targets

        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        units = as_units(X, who=type(self).__name__)
        y = np.asarray(y)
        check_classification_targets(y)
        if len(y) != len(units):
            raise ValueError(f"{len(units)} units but {len(y)} labels")
        self.n_features_in_ = units[0].shape[1]
        rng = np.random.default_rng(self.random_state)
        base = self.estimator if self.estimator is not None else LogisticRegression(max_iter=2000)
        self.estimator_ = clone(base).fit(self._samples(units, rng), np.repeat(y, self.n_samples))
        self.classes_ = self.estimator_.classes_
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        units = as_units(X, self.n_features_in_, type(self).__name__)
        rng = np.random.default_rng(self.random_state + 1)
        p = self.estimator_.predict_proba(self._samples(units, rng))
        return p.reshape(len(units), self.n_samples, -1).mean(1)

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)  # checks it is fitted
        return self.classes_[proba.argmax(1)]


DESCRIPTORS = ("mean", "moments", "mixture")


def describe(recs: Units, kind: str, n_samples: int = 64, *, seed: int = 0) -> pd.DataFrame:
    """One row per recording (``mean``, ``moments``) or per mixture sample (``mixture``), with labels.

    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> frames = pd.DataFrame({"path": ["a.wav"] * 3 + ["b.wav"] * 2, "frame_in_recording": [0, 1, 2, 0, 1],
    ...                        "site": ["s1"] * 3 + ["s2"] * 2, "mu_000": rng.normal(size=5),
    ...                        "mu_001": rng.normal(size=5), "logvar_000": np.zeros(5), "logvar_001": np.zeros(5)})
    >>> table = describe(group_units(frames), "moments")
    >>> list(table.columns)  # per recording: its labels, then the mean and variance of each dimension
    ['unit', 'path', 'site', 'n_frames', 'mean_000', 'mean_001', 'var_000', 'var_001']
    """
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
