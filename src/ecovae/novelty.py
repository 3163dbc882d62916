"""Unusual sounds ranked: a novelty score per frame from the density of the survey's own frames.

As Sethi et al. (2020, PNAS, "Characterizing soundscapes across diverse ecosystems using a universal acoustic
feature set") score anomalies: a Gaussian mixture fitted to the survey's frames, and a frame's score is its
negative log density under it, so the sounds the survey rarely makes score highest. The mixture has few
components (8) with diagonal covariances on standardised features: with many components a handful of rare frames
take one of their own and score as typical (measured: 32 components on a 1,344-frame survey ranked planted
events last); PCA first would drop exactly the rare directions. Digitally silent frames are left out of the fit
and the ranking (they are flagged, not unusual).

Scores on more than one feature set can be asked for (``vae``: the posterior means; ``logmel``: the frame's mean
log-mel per band) and, opt in, the frame's negative ELBO under the model (a decoder pass: how badly the model
explains it). The first one asked for ranks the frames. On the simulated survey with planted sirens and chainsaws
(``bench/novelty.py``), the band-mean density found them first and a tiny model's latent density did not: which
score to trust is measured there, not assumed.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ecovae import plots
from ecovae.audio import BadAudio, open_recording
from ecovae.files import atomic_file
from ecovae.latents import FEATURE_SETS, is_feature_column
from ecovae.model import SoundscapeVAE
from ecovae.spectrogram import SpectrogramConfig
from ecovae.survey import recording_clips

log = logging.getLogger(__name__)

SCORES_FILE, TOP_FILE, SUMMARY_FILE, HISTOGRAM_FILE = (
    "novelty.parquet",
    "novelty_top.csv",
    "novelty.json",
    "novelty_histogram.png",
)
EVENTS_FILE = "events.csv"  # known events of a survey (the simulator's planted ones): path, kind, start_s, end_s


def density_model(x: np.ndarray, components: int = 8, seed: int = 0) -> Pipeline:
    """Standardise, then a Gaussian mixture of ``components`` with diagonal covariances, fitted to ``x``."""
    n, d = x.shape
    components = max(1, min(components, n // (10 * 2)))  # a few dozen frames per component at least
    mixture = GaussianMixture(components, covariance_type="diag", reg_covar=1e-3, n_init=2, random_state=seed)
    return make_pipeline(StandardScaler(), mixture).fit(x)


def _columns(frames: pd.DataFrame, features: str) -> list[str]:
    if features not in FEATURE_SETS:
        raise ValueError(f"features must be among {sorted(FEATURE_SETS)}, not {features!r}")
    prefix = FEATURE_SETS[features][0]
    cols = [c for c in frames.columns if c.startswith(prefix) and is_feature_column(c)]
    if not cols:
        raise ValueError(f"no {prefix}* columns in the latents: is this an 'ecovae encode' output?")
    return cols


def novelty_scores(
    frames: pd.DataFrame,
    features: Sequence[str] = ("logmel", "vae"),
    components: int = 8,
    seed: int = 0,
    neg_elbo: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per frame, keyed like the latents (their non-feature columns), with ``novelty_<features>`` for
    each feature set (negative log density; higher is rarer), ``neg_elbo`` if given, and ``rank`` by the first
    score (1 = most unusual; silent frames unranked, NaN)."""
    if isinstance(features, str):
        features = [features]
    silent = frames["silent"].to_numpy(bool) if "silent" in frames else np.zeros(len(frames), bool)
    if (~silent).sum() < 3:
        raise ValueError(f"{(~silent).sum()} frames that are not silent: too few to fit a density to")
    out = frames[[c for c in frames.columns if not is_feature_column(c)]].copy()
    for name in features:
        x = frames[_columns(frames, name)].to_numpy(np.float64)
        score = -density_model(x[~silent], components, seed).score_samples(x)
        out[f"novelty_{name}"] = np.where(silent, np.nan, score)
    if neg_elbo is not None:
        out["neg_elbo"] = np.where(silent, np.nan, neg_elbo)
    first = f"novelty_{features[0]}" if features else "neg_elbo"
    out["rank"] = out[first].rank(ascending=False, method="first")
    return out


@torch.no_grad()
def neg_elbo_per_frame(
    model: SoundscapeVAE, spec: SpectrogramConfig, root: Path | str, frames: pd.DataFrame
) -> np.ndarray:
    """Each frame's negative ELBO (nats: the Gaussian reconstruction term at z = mu, plus KL), aligned with
    ``frames`` by path and frame_in_recording; NaN for a recording that cannot be read now (logged)."""
    root = Path(root)
    model = model.eval()
    out = np.full(len(frames), np.nan)
    sigma = model.log_sigma.exp()
    for path, rows in frames.groupby("path", sort=False).indices.items():
        try:
            clips = recording_clips(open_recording(root / path, root), spec)
        except BadAudio as e:
            log.warning("negative ELBO left out: %s", e)
            continue
        values = []
        for clip in clips:
            x = clip.logmel[None, None]
            recon, mu, logvar = model(x, sample=False)
            err = (recon.float() - x)[0, 0].reshape(-1, spec.frame_hops, x.shape[-1])  # (frames, hops, mels)
            nll = (0.5 * (err / sigma) ** 2 + model.log_sigma + 0.5 * math.log(2 * math.pi)).sum((1, 2))
            kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()))[0].sum(-1)
            values.append((nll + kl).numpy())
        per_frame = np.concatenate(values)
        index = frames["frame_in_recording"].to_numpy()[rows]
        ok = index < len(per_frame)
        out[rows[ok]] = per_frame[index[ok]]
    return out


def read_events(path: Path | str) -> pd.DataFrame | None:
    """A survey's known events (path, kind, start_s, end_s), or None where it has none."""
    path = Path(path)
    return pd.read_csv(path) if path.is_file() else None


def event_ranks(scores: pd.DataFrame, events: pd.DataFrame, frame_seconds: float) -> list[dict]:
    """For each known event: the frames that overlap it and their best rank under each score."""
    score_cols = [c for c in scores.columns if c.startswith("novelty_") or c == "neg_elbo"]
    ranks = {c: scores[c].rank(ascending=False, method="first") for c in score_cols}
    start = scores["frame_offset_s"].to_numpy()
    rows = []
    for e in events.itertuples(index=False):
        hit = (scores["path"].to_numpy() == e.path) & (start < e.end_s) & (start + frame_seconds > e.start_s)
        rows.append(
            {
                "path": e.path,
                "kind": e.kind,
                "start_s": float(e.start_s),
                "end_s": float(e.end_s),
                "frames": int(hit.sum()),
                "best_rank": {
                    c: (int(r[hit].min()) if hit.any() and r[hit].notna().any() else None) for c, r in ranks.items()
                },
            }
        )
    return rows


def write_novelty(
    scores: pd.DataFrame,
    out: Path | str,
    top: int = 50,
    events: pd.DataFrame | None = None,
    frame_seconds: float = 1.536,
    settings: dict | None = None,
) -> dict:
    """The scores as Parquet (keyed like the latents), the ``top`` frames as CSV, the histogram of the ranking
    score, and novelty.json (settings, counts, and where known events rank). Returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / SCORES_FILE) as tmp:
        scores.to_parquet(tmp, index=False)
    best = scores.nsmallest(top, "rank")
    with atomic_file(out / TOP_FILE) as tmp:
        best.to_csv(tmp, index=False)
    ranking = next(c for c in scores.columns if c.startswith("novelty_") or c == "neg_elbo")
    plots.novelty_histogram(scores[ranking].dropna().to_numpy(), top, ranking, out / HISTOGRAM_FILE)
    summary = {
        **(settings or {}),
        "ranked_by": ranking,
        "scores": [c for c in scores.columns if c.startswith("novelty_") or c == "neg_elbo"],
        "frames": len(scores),
        "silent_frames": int(scores["rank"].isna().sum()),
        "top": top,
        "histogram": HISTOGRAM_FILE,
        "events": event_ranks(scores, events, frame_seconds) if events is not None else None,
    }
    with atomic_file(out / SUMMARY_FILE) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
