"""Unusual sounds ranked: a novelty score per frame from the density of the survey's own frames.

Sethi et al. (2020, PNAS) score anomalies by the density of the survey's frames (a Gaussian mixture): the
sounds a survey rarely makes score highest. We keep the density and change the estimator, on measurements:

* k-nearest-neighbour density (log distance to the 16th nearest frame, standardised features), not a
  mixture: a mixture with enough components to follow the diel cycle gives a handful of rare frames a
  component of their own and scores them as typical (planted sirens and chainsaws ranked last of 224 frames).
  A sound has to fill more than 16 frames (~25 s) of the survey to make itself common.
* each frame described by its features and by their departure from its recording's median: a sound that
  comes and goes stands out from the recording it is in, whatever the hour, weather or site made the rest.
* standardised features soft-clipped at 3 sd (``3 tanh(z / 3)``): past 3 sd a feature is unusual and more sd
  add little, so a sound that changes many bands (a siren's sweep) outranks one band's extreme swing (a bird
  singing at the microphone, which a dawn chorus repeats). Without it the survey's heavy-tailed bands decide
  the distance: on the quickstart's survey a siren at night ranked 20th, after 13 loud dawn songs.

On the quickstart's survey (seven seeds, two sirens and two chainsaws each, 30 dB over the ambient) the
band-mean (``logmel``) score ranks every chainsaw before any ordinary frame, and 12 of 14 sirens (the other two
after one ordinary frame each; without the clip 7 of 14, the worst after 13): ``bench/novelty.py``. The tiny
quickstart model's latents (``vae``) and its negative ELBO (a decoder pass, opt in) rank them lower: so
``logmel`` ranks by default and every score is kept beside it, to compare where a survey has known events
(``events.csv``). Digitally silent frames are left out (flagged, not unusual).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.preprocessing import StandardScaler

from ecovae import plots
from ecovae.audio import BadAudio, open_recording
from ecovae.excerpts import write_excerpts
from ecovae.files import atomic_file, file_stats, read_file_cache, write_file_cache
from ecovae.latents import is_feature_column, silent_frames, value_columns
from ecovae.model import SoundscapeVAE
from ecovae.outputs import NOVELTY_SUMMARY_FILE
from ecovae.run import state_digest
from ecovae.spectrogram import SpectrogramConfig
from ecovae.survey import Survey, recording_clips

log = logging.getLogger(__name__)

SCORES_FILE, TOP_FILE, SUMMARY_FILE, HISTOGRAM_FILE = (
    "novelty.parquet",
    "novelty_top.csv",
    NOVELTY_SUMMARY_FILE,
    "novelty_histogram.png",
)
# a survey's known events (the simulator's planted ones): path, kind, start_s, end_s[, level_db]
EVENTS_FILE = "events.csv"


NEIGHBOURS = 16  # a sound must fill more frames than this (~25 s) in the survey to count as common
REFERENCE_FRAMES = 50_000  # neighbours searched among at most this many frames (a seeded sample): memory and time
CLIP_SD = 3.0  # standardised features soft-clipped here: no one feature's extreme swing outweighs many features
UNUSUAL_FRACTION = 0.05  # the frames no class's exemplar may be: the top list, at most this share of a survey


def _with_context(x: np.ndarray, recordings: np.ndarray) -> np.ndarray:
    """Each frame's features beside their departure from its recording's median: a sound that comes and goes
    stands out from the recording it is in, whatever the hour, weather or site made the rest of it."""
    median = pd.DataFrame(x).groupby(recordings, sort=False).transform("median").to_numpy()
    return np.concatenate([x, x - median], axis=1)


def knn_novelty(
    x: np.ndarray, neighbours: int = NEIGHBOURS, seed: int = 0, *, clip_sd: float | None = CLIP_SD
) -> np.ndarray:
    """Log distance from each row to its ``neighbours``-th nearest other row (standardised features): the
    k-nearest-neighbour density estimate, so higher is rarer. Unlike a Gaussian mixture, a handful of rare
    frames cannot make a dense cluster of their own: their k-th neighbour is an ordinary frame far away.
    Standardised features are soft-clipped at ``clip_sd`` (None: not clipped), so the distance counts how many
    features are unusual more than how far the most extreme one went."""
    from sklearn.neighbors import NearestNeighbors

    z = StandardScaler().fit_transform(x)
    z = (z if clip_sd is None else clip_sd * np.tanh(z / clip_sd)).astype(np.float32)
    n = len(z)
    rng = np.random.default_rng(seed)
    reference = np.sort(rng.choice(n, REFERENCE_FRAMES, replace=False)) if n > REFERENCE_FRAMES else np.arange(n)
    k = min(neighbours, len(reference) - 1)
    dist, index = NearestNeighbors(n_neighbors=k + 1).fit(z[reference]).kneighbors(z)
    is_self = reference[index[:, 0]] == np.arange(n)  # a reference frame finds itself first: skip it
    kth = np.where(is_self, dist[:, k], dist[:, k - 1])
    return np.log(np.maximum(kth, 1e-12))


def novelty_scores(
    frames: pd.DataFrame,
    features: Sequence[str] = ("logmel", "vae"),
    neighbours: int = NEIGHBOURS,
    *,
    seed: int = 0,
    neg_elbo: np.ndarray | None = None,
    clip_sd: float | None = CLIP_SD,
) -> pd.DataFrame:
    """One row per frame, keyed like the latents (their non-feature columns), with ``novelty_<features>`` for
    each feature set (log distance to the k-th nearest frame; higher is rarer), ``neg_elbo`` if given, and
    ``rank`` by the first score (1 = most unusual; silent frames unranked, NaN).

    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> mu = rng.normal(size=(40, 2)) * 0.1
    >>> mu[7] = [6.0, 6.0]  # one frame far from the rest
    >>> frames = pd.DataFrame({"path": "a.wav", "frame_in_recording": range(40), "mu_000": mu[:, 0],
    ...                        "mu_001": mu[:, 1], "logvar_000": 0.0, "logvar_001": 0.0})
    >>> scores = novelty_scores(frames, "vae", neighbours=4)
    >>> int(scores.loc[scores["rank"] == 1, "frame_in_recording"].iloc[0])
    7
    """
    if isinstance(features, str):
        features = [features]
    silent = silent_frames(frames)
    if (~silent).sum() < 3:
        raise ValueError(f"{(~silent).sum()} frames that are not silent: too few to rank")
    out = frames[[c for c in frames.columns if not is_feature_column(c)]].copy()
    recordings = frames["path"].to_numpy()
    for name in features:
        x = frames[value_columns(frames, name)].to_numpy(np.float64)[~silent]  # silence is no context either
        score = np.full(len(frames), np.nan)
        score[~silent] = knn_novelty(_with_context(x, recordings[~silent]), neighbours, seed, clip_sd=clip_sd)
        out[f"novelty_{name}"] = score
    if neg_elbo is not None:
        out["neg_elbo"] = np.where(silent, np.nan, neg_elbo)
    first = f"novelty_{features[0]}" if features else "neg_elbo"
    out["rank"] = out[first].rank(ascending=False, method="first")
    return out


ELBO_CACHE_FILE, ELBO_CACHE_KEY = "neg_elbo_cache.parquet", "ecovae_neg_elbo"
ELBO_CACHE_EVERY_S = 120.0  # a long decoder pass saves what it has this often: a crash loses minutes, not hours


def _save_elbo(cache: Path, parts: list[pd.DataFrame], settings: dict) -> None:
    write_file_cache(
        cache, pd.concat([p for p in parts if len(p)], ignore_index=True), ELBO_CACHE_KEY, settings=settings
    )


@torch.no_grad()
def neg_elbo_per_frame(
    model: SoundscapeVAE,
    spec: SpectrogramConfig,
    root: Path | str,
    *,
    frames: pd.DataFrame,
    cache: Path | str | None = None,
) -> np.ndarray:
    """Each frame's negative ELBO (nats: the Gaussian reconstruction term at z = mu, plus KL), aligned with
    ``frames`` by path and frame_in_recording; NaN for a recording that cannot be read now (logged).

    A decoder pass over the whole survey costs about what encoding did, so with ``cache`` (a Parquet file) the
    values are kept per recording, for this model's weights and these spectrogram settings, and saved every
    couple of minutes: a run resumed after a crash, or run again, computes only recordings new or changed."""
    root = Path(root)
    model = model.eval()
    out = np.full(len(frames), np.nan)
    groups = frames.groupby("path", sort=False).indices
    settings = {"weights": state_digest(model), "spectrogram": asdict(spec)}
    stats = file_stats(root, groups)
    cached = read_file_cache(Path(cache), ELBO_CACHE_KEY, settings, stats=stats) if cache else pd.DataFrame()
    done = {p: g.sort_values("frame")["neg_elbo"].to_numpy() for p, g in cached.groupby("path")} if len(cached) else {}
    new, saved = [], time.monotonic()
    for path, rows in groups.items():
        per_frame = done.get(path)
        if per_frame is None:
            try:
                clips = recording_clips(open_recording(root / path, root), spec)
            except BadAudio as e:
                log.warning("negative ELBO left out: %s", e)
                continue
            per_frame = np.concatenate([model.frame_neg_elbo(c.logmel[None, None])[0].numpy() for c in clips])
            size, mtime_ns = stats[path] or (-1, -1)
            new.append(
                pd.DataFrame({"path": path, "frame": np.arange(len(per_frame)), "neg_elbo": per_frame}).assign(
                    _size=size, _mtime_ns=mtime_ns
                )
            )
            if cache and time.monotonic() - saved > ELBO_CACHE_EVERY_S:
                _save_elbo(Path(cache), [cached, *new], settings)
                saved = time.monotonic()
        index = frames["frame_in_recording"].to_numpy()[rows]
        ok = index < len(per_frame)
        out[rows[ok]] = per_frame[index[ok]]
    if cache and new:
        _save_elbo(Path(cache), [cached, *new], settings)
    return out


def distinct_moments(scores: pd.DataFrame, n: int, apart: int = 3) -> pd.DataFrame:
    """The ``n`` best-ranked frames of which no two in one recording are fewer than ``apart`` frames apart: the
    frames of one sound rank together, and an excerpt with 1.5 s either side (about a frame) already plays its
    neighbours, so ten excerpts to hear are ten moments, not one siren three times."""
    chosen, taken = [], {}
    for i, path, frame in (
        scores.dropna(subset=["rank"]).sort_values("rank")[["path", "frame_in_recording"]].itertuples()
    ):
        near = taken.setdefault(path, [])
        if any(abs(frame - f) < apart for f in near):
            continue
        near.append(frame)
        chosen.append(i)
        if len(chosen) == n:
            break
    return scores.loc[chosen]


def unusual_frames(out: Path | str) -> pd.DataFrame | None:
    """The survey's most unusual frames (path, frame_in_recording, rank), as ``write_novelty`` left them in
    ``out``: its top list, at most ``UNUSUAL_FRACTION`` of the ranked frames; None where it was not run."""
    top, summary = Path(out) / TOP_FILE, Path(out) / SUMMARY_FILE
    if not (top.is_file() and summary.is_file()):
        return None
    ranked = json.loads(summary.read_text())
    most = max(1, int(UNUSUAL_FRACTION * (ranked["frames"] - ranked["silent_frames"])))
    return pd.read_csv(top, usecols=["path", "frame_in_recording", "rank"]).nsmallest(most, "rank")


def read_events(path: Path | str) -> pd.DataFrame | None:
    """A survey's known events (path, kind, start_s, end_s), or None where it has none."""
    path = Path(path)
    return pd.read_csv(path) if path.is_file() else None


def known_event(row: dict, events: pd.DataFrame | None, frame_seconds: float) -> str | None:
    """The kind of the known event (``events.csv``) that a frame overlaps, if any: a planted sound is marked."""
    if events is None or "path" not in row or "frame_offset_s" not in row:
        return None
    start = float(row["frame_offset_s"])
    for e in events.itertuples(index=False):
        if e.path == row["path"] and start < e.end_s and start + frame_seconds > e.start_s:
            return str(e.kind)
    return None


def score_columns(scores: pd.DataFrame) -> list[str]:
    """The score columns of a novelty table, the ranking one first."""
    return [c for c in scores.columns if c.startswith("novelty_") or c == "neg_elbo"]


def event_ranks(scores: pd.DataFrame, events: pd.DataFrame, frame_seconds: float) -> list[dict]:
    """For each known event: the frames that overlap it, their best rank under each score, and how many
    ordinary frames (overlapping no known event) rank before that."""
    ranks = {c: scores[c].rank(ascending=False, method="first").to_numpy() for c in score_columns(scores)}
    start, paths = scores["frame_offset_s"].to_numpy(), scores["path"].to_numpy()
    hits = [(paths == e.path) & (start < e.end_s) & (start + frame_seconds > e.start_s) for e in events.itertuples()]
    ordinary = ~np.logical_or.reduce(hits) if hits else np.ones(len(scores), bool)
    rows = []
    for e, hit in zip(events.itertuples(index=False), hits, strict=True):
        best = {
            c: (float(np.nanmin(r[hit])) if hit.any() and not np.isnan(r[hit]).all() else None)
            for c, r in ranks.items()
        }
        rows.append(
            {
                "path": e.path,
                "kind": e.kind,
                "start_s": float(e.start_s),
                "end_s": float(e.end_s),
                "frames": int(hit.sum()),
                "best_rank": {c: (int(b) if b is not None else None) for c, b in best.items()},
                "ordinary_before": {
                    c: (int((ordinary & (ranks[c] < b)).sum()) if b is not None else None) for c, b in best.items()
                },
            }
        )
    return rows


def write_novelty(
    scores: pd.DataFrame,
    out: Path | str,
    *,
    top: int = 50,
    events: pd.DataFrame | None = None,
    frame_seconds: float = 1.536,
    settings: dict | None = None,
    listen: list[dict] | None = None,
) -> dict:
    """The scores as Parquet (keyed like the latents), the ``top`` frames as CSV, the histogram of the ranking
    score, and novelty.json (settings, counts, where known events rank, the excerpts to ``listen`` to). Returns
    the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / SCORES_FILE) as tmp:
        scores.to_parquet(tmp, index=False)
    best = scores.nsmallest(top, "rank")
    with atomic_file(out / TOP_FILE) as tmp:
        best.to_csv(tmp, index=False)
    ranking = score_columns(scores)[0]
    plots.novelty_histogram(scores[ranking].dropna().to_numpy(), top, ranking, path=out / HISTOGRAM_FILE)
    summary = {
        **(settings or {}),
        "ranked_by": ranking,
        "scores": score_columns(scores),
        "frames": len(scores),
        "silent_frames": int(scores["rank"].isna().sum()),
        "top": top,
        "histogram": HISTOGRAM_FILE,
        "events": event_ranks(scores, events, frame_seconds) if events is not None else None,
        "listen": [{**r, "event": known_event(r, events, frame_seconds)} for r in listen or []],
    }
    with atomic_file(out / SUMMARY_FILE) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


FEATURES = ("logmel", "vae")  # scored by default; the first ranks (why log-mel: the module's docstring, measured)
TOP = 50  # frames in the top list
LISTEN = 10  # moments of the top list (no two excerpts overlapping) to hear in the report


def rank_survey(
    frames: pd.DataFrame,
    survey: Survey,
    *,
    out: Path,
    features: tuple[str, ...] = FEATURES,
    top: int = TOP,
    elbo_model: SoundscapeVAE | None = None,
    seed: int = 0,
) -> dict:
    """Score every frame, write the scores and their summary, and excerpts of the most unusual moments to listen
    to (from the survey's recordings), as ``ecovae novelty`` does; with ``elbo_model``, each frame's negative
    ELBO too. Returns the summary (novelty.json)."""
    cache = out / ELBO_CACHE_FILE  # the decoder pass is as long as encoding: a resumed run must not redo it
    neg_elbo = (
        neg_elbo_per_frame(elbo_model, survey.spec, survey.root, frames=frames, cache=cache) if elbo_model else None
    )
    scores = novelty_scores(frames, features, seed=seed, neg_elbo=neg_elbo)
    settings = {
        "features": list(features),
        "neighbours": NEIGHBOURS,
        "clip_sd": CLIP_SD,
        "neg_elbo": neg_elbo is not None,
        "recordings": str(survey.root),
    }
    columns = score_columns(scores)
    wanted = [
        (
            f"excerpts/top_{int(r['rank']):03d}",
            r["path"],
            r["frame_offset_s"],
            {"rank": int(r["rank"])} | {c: float(r[c]) for c in columns},
        )
        for _, r in distinct_moments(scores, min(top, LISTEN)).iterrows()
    ]
    listen = write_excerpts(survey.root, wanted, frame_s=survey.spec.frame_seconds, out=out)
    events = read_events(survey.root / EVENTS_FILE)
    return write_novelty(
        scores, out, top=top, events=events, frame_seconds=survey.spec.frame_seconds, settings=settings, listen=listen
    )
