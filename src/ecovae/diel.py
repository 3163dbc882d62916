"""Days at a glance: a long-duration false-colour image of the latents, and their diel profile.

Like the false-colour index spectrograms of long recordings (Towsey et al. 2014; QUT's Ecoacoustics Audio
Analysis software), but from the learned latents: the survey's frames are projected on the first three
principal components of mu, which become red, green and blue. One image per site (or any label): days as rows,
time of day as columns, each cell the mean of its frames. The colour scale is fixed across groups (each
component's 2nd to 98th percentile over the whole survey), so the same colour means the same sound everywhere.
Beside it, each component's median and interquartile range by hour over all days.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from ecovae import plots
from ecovae.files import safe_name
from ecovae.latents import is_feature_column, silent_frames, value_columns
from ecovae.outputs import DIEL_FILE


@dataclass
class DielView:
    """One group's days at a glance."""

    group: str
    days: list[str]  # YYYY-MM-DD, one per row
    image: np.ndarray  # (days, bins, 3) in [0, 1]; NaN where nothing was recorded
    profile: dict  # hours (list), median / q25 / q75: 3 lists (one per component) over hours
    frames: int


def diel_views(
    frames: pd.DataFrame, by: str | None = "site", bin_minutes: int = 30, *, seed: int = 0
) -> tuple[list[DielView], dict]:
    """The false-colour image and diel profile per value of ``by`` (one view of everything if None), and the
    shared settings (explained variance, colour scale). Frames without a time or silent are left out."""
    if "frame_time" not in frames.columns:
        raise ValueError("the latents have no frame_time column: times come from dates in the file names")
    if 1440 % bin_minutes:
        raise ValueError(f"--bin-minutes must divide a day (1440 minutes), not {bin_minutes}")
    if by is not None and by not in frames.columns:
        labels = [c for c in frames.columns if not is_feature_column(c)]
        raise ValueError(f"no label column {by!r} to group by; the latents have {labels}")
    times = pd.to_datetime(frames["frame_time"])
    keep = times.notna().to_numpy() & ~silent_frames(frames)
    if keep.sum() < 3:
        raise ValueError(f"{int(keep.sum())} frames with a time: too few for a diel view (no dates in the names?)")
    frames, times = frames[keep], times[keep]
    mu = frames[value_columns(frames, "vae")]
    pca = PCA(3, random_state=seed).fit(mu.to_numpy(np.float64))
    pcs = pca.transform(mu.to_numpy(np.float64))
    lo, hi = np.percentile(pcs, [2, 98], axis=0)
    colour = np.clip((pcs - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    minutes = (times.dt.hour * 60 + times.dt.minute).to_numpy()
    column = minutes // bin_minutes
    day = times.dt.strftime("%Y-%m-%d").to_numpy()
    hour = times.dt.hour.to_numpy()
    groups = frames[by].astype(str).to_numpy() if by else np.full(len(frames), "all")
    views = []
    for group in sorted(set(groups)):
        own = groups == group
        days = sorted(set(day[own]))
        row = {d: i for i, d in enumerate(days)}
        total = np.zeros((len(days), 1440 // bin_minutes, 3))
        count = np.zeros((len(days), 1440 // bin_minutes, 1))
        r = np.array([row[d] for d in day[own]])
        np.add.at(total, (r, column[own]), colour[own])
        np.add.at(count, (r, column[own]), 1)
        image = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        hours = sorted(set(hour[own]))
        stats = {key: [[] for _ in range(3)] for key in ("median", "q25", "q75")}
        for h in hours:
            q = np.percentile(pcs[own][hour[own] == h], [50, 25, 75], axis=0)
            for k in range(3):
                for key, value in zip(("median", "q25", "q75"), q[:, k], strict=True):
                    stats[key][k].append(float(value))
        views.append(DielView(group, days, image, {"hours": [float(h) for h in hours], **stats}, frames=int(own.sum())))
    settings = {
        "by": by,
        "bin_minutes": bin_minutes,
        "explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_],
        "colour_scale": {"low": lo.tolist(), "high": hi.tolist()},
        "frames": int(keep.sum()),
    }
    return views, settings


def shared_ylim(profiles: list[dict]) -> tuple[float, float] | None:
    """One y-range covering every group's interquartile bands (a margin of 5%), or None if there is nothing."""
    values = [np.asarray(p[key], float).ravel() for p in profiles for key in ("q25", "q75")]
    values = np.concatenate(values) if values else np.array([])
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    lo, hi = float(values.min()), float(values.max())
    pad = 0.05 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def write_diel(views: list[DielView], settings: dict, out: Path | str) -> dict:
    """One PNG per group (diel_<group>.png) and diel.json (settings, groups, images). Returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    ylim = shared_ylim([v.profile for v in views])
    for v in views:
        name = f"diel_{safe_name(v.group)}.png"
        title = f"{settings['by'] or 'survey'} {v.group}: {len(v.days)} days, {v.frames} frames"
        plots.diel(v.image, v.days, v.profile, title=title, path=out / name, ylim=ylim)
        images.append({"group": v.group, "image": name, "days": v.days, "frames": v.frames, "profile": v.profile})
    summary = {**settings, "views": images}
    (out / DIEL_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
