"""Unusual sounds ranked: a novelty score per frame from the density of the survey's own frames.

As Sethi et al. (2020, PNAS, "Characterizing soundscapes across diverse ecosystems using a universal acoustic
feature set") score anomalies: a Gaussian mixture fitted to the survey's frames, and a frame's score is its
negative log density under it, so the sounds the survey rarely makes score highest. The mixture is fitted on
standardised features reduced by PCA (a full covariance in 128 dimensions needs more frames than most surveys
have), with few components, so a handful of rare frames cannot take a component of their own. Digitally
silent frames are left out of the fit and the ranking (they are flagged, not unusual).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ecovae import plots
from ecovae.files import atomic_file
from ecovae.latents import FEATURE_SETS, is_feature_column

SCORES_FILE, TOP_FILE, HISTOGRAM_FILE = "novelty.parquet", "novelty_top.csv", "novelty_histogram.png"


def density_model(x: np.ndarray, components: int = 4, dims: int = 16, seed: int = 0) -> Pipeline:
    """Standardise, PCA to ``dims``, Gaussian mixture of ``components`` (full covariances), fitted to ``x``."""
    n, d = x.shape
    dims = max(1, min(dims, d, n - 1))
    components = max(1, min(components, n // (5 * (dims + 1))))  # enough frames per component's covariance
    mixture = GaussianMixture(components, covariance_type="full", reg_covar=1e-3, n_init=2, random_state=seed)
    return make_pipeline(StandardScaler(), PCA(dims, random_state=seed), mixture).fit(x)


def novelty_scores(
    frames: pd.DataFrame, features: str = "vae", components: int = 4, dims: int = 16, seed: int = 0
) -> pd.DataFrame:
    """One row per frame, keyed like the latents (their non-feature columns), with ``novelty`` (negative log
    density; higher is rarer) and ``rank`` (1 = most unusual; silent frames unranked, NaN)."""
    if features not in FEATURE_SETS:
        raise ValueError(f"features must be one of {sorted(FEATURE_SETS)}, not {features!r}")
    prefix = FEATURE_SETS[features][0]
    cols = [c for c in frames.columns if c.startswith(prefix) and is_feature_column(c)]
    if not cols:
        raise ValueError(f"no {prefix}* columns in the latents: is this an 'ecovae encode' output?")
    x = frames[cols].to_numpy(np.float64)
    silent = frames["silent"].to_numpy(bool) if "silent" in frames else np.zeros(len(frames), bool)
    if (~silent).sum() < 3:
        raise ValueError(f"{(~silent).sum()} frames that are not silent: too few to fit a density to")
    model = density_model(x[~silent], components, dims, seed)
    out = frames[[c for c in frames.columns if not is_feature_column(c)]].copy()
    out["novelty"] = -model.score_samples(x)
    out.loc[silent, "novelty"] = np.nan
    out["rank"] = out["novelty"].rank(ascending=False, method="first")
    return out


def write_novelty(scores: pd.DataFrame, out: Path | str, top: int = 50) -> dict[str, Path]:
    """The scores as Parquet (keyed like the latents), the ``top`` frames as CSV, and the scores' histogram."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"scores": out / SCORES_FILE, "top": out / TOP_FILE, "histogram": out / HISTOGRAM_FILE}
    with atomic_file(paths["scores"]) as tmp:
        scores.to_parquet(tmp, index=False)
    with atomic_file(paths["top"]) as tmp:
        scores.nsmallest(top, "rank").to_csv(tmp, index=False)
    plots.novelty_histogram(scores["novelty"].dropna().to_numpy(), top, paths["histogram"])
    return paths
