"""Interpretation: reconstructions, saliency maps, walks across the decision boundary, projections.

* Reconstruction metrics on the run's held-out recordings (per-pixel MSE and
  MAE, Gaussian log-likelihood, KL, negative ELBO) and input | reconstruction
  | error images.
* Saliency: the linear classifier's score for a class, as a function of the
  input log-mel through the encoder (score = w . mean_t mu_t + b), attributed to
  time-frequency cells by integrated gradients and gradient x input (Captum).
* Boundary walk: from one class's mean latent, along the unit normal of the
  logistic-regression hyperplane (A vs B) to past the boundary, each step
  decoded to a spectrogram, with the classifier's probability.
* PCA and UMAP of the descriptors, coloured by each label.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ecovae import plots
from ecovae.audio import BadAudio, open_recording
from ecovae.descriptors import MixtureMoments, TimeAveraged, Units
from ecovae.model import SoundscapeVAE
from ecovae.spectrogram import SpectrogramConfig, iter_clips

log = logging.getLogger(__name__)


@dataclass
class LinearScore:
    """A linear function of the time-averaged latent: w . z + b, in the latent's own units."""

    w: np.ndarray
    b: float

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return z @ self.w + self.b


def fit_linear(z: np.ndarray, y: np.ndarray, positive: str) -> LinearScore:
    """Logistic regression (on standardised features) of ``positive`` vs the rest, mapped back to raw units."""
    scaler = StandardScaler().fit(z)
    lr = LogisticRegression(max_iter=5000, class_weight="balanced").fit(scaler.transform(z), y == positive)
    w = lr.coef_[0] / scaler.scale_
    return LinearScore(w, float(lr.intercept_[0] - np.sum(lr.coef_[0] * scaler.mean_ / scaler.scale_)))


# --------------------------------------------------------------------------- reconstruction


def first_clip(rec_path: Path, root: Path, spec: SpectrogramConfig, max_frames: int | None = None) -> torch.Tensor:
    """The first clip's log-mel, (hops, mels), optionally cut to whole frames."""
    clip = next(iter_clips(open_recording(rec_path, root), spec), None)
    if clip is None:
        raise BadAudio(rec_path, "shorter than one frame")
    x = clip.logmel
    if max_frames:
        x = x[: max_frames * spec.frame_hops]
    return x


@torch.no_grad()
def reconstruction_metrics(model: SoundscapeVAE, root: Path, paths: list[str], spec: SpectrogramConfig,
                           out: Path, n_images: int = 3, seed: int = 0) -> dict:  # fmt: skip
    """Per-pixel MSE and MAE, Gaussian log-likelihood, KL and negative ELBO per frame on held-out recordings."""
    torch.manual_seed(seed)
    totals, frames, images = {}, 0, []
    for rel in paths:
        try:
            rec = open_recording(root / rel, root)
            clips = list(iter_clips(rec, spec))
        except BadAudio as e:
            log.warning("reconstruction: skipped %s", e)
            continue
        for clip in clips:
            x = clip.logmel[None, None]
            parts = model.loss(x)
            n = clip.n_frames
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + float(v) * n
            frames += n
        if len(images) < n_images and clips:
            x = clips[0].logmel[: 8 * spec.frame_hops]
            recon, _, _ = model(x[None, None], sample=False)
            name = f"reconstruction_{len(images)}.png"
            plots.reconstruction(x.numpy(), recon[0, 0].numpy(), rel, out / name)
            images.append({"path": rel, "image": name})
    if not frames:
        return {"frames": 0, "images": []}
    m = {k: v / frames for k, v in totals.items()}
    return {
        "recordings": len(paths), "frames": frames, "mse_per_pixel": m["mse"], "mae_per_pixel": m["mae"],
        "gaussian_log_likelihood_per_frame": -m["recon_nll"], "kl_per_frame": m["kl"],
        "neg_elbo_per_frame": m["neg_elbo"], "images": images,
    }  # fmt: skip


# --------------------------------------------------------------------------- saliency


class ClassScore(torch.nn.Module):
    """Input log-mel (B, 1, T, F) -> the linear classifier's score of the recording's mean latent."""

    def __init__(self, model: SoundscapeVAE, score: LinearScore):
        super().__init__()
        self.model = model
        self.register_buffer("w", torch.as_tensor(score.w, dtype=torch.float32))
        self.b = score.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.model.encode(x)  # (B, frames, D)
        return mu.mean(1) @ self.w + self.b  # (B,)


def saliency_maps(model: SoundscapeVAE, x: torch.Tensor, score: LinearScore, ig_steps: int = 32) -> dict[str, np.ndarray]:
    """Integrated gradients (baseline: digital silence) and gradient x input, each shaped like x (hops, mels)."""
    from captum.attr import InputXGradient, IntegratedGradients

    f = ClassScore(model.eval(), score)
    inp = x[None, None].clone().requires_grad_(True)
    baseline = torch.full_like(inp, float(np.log(SpectrogramConfig().log_floor)))
    ig = IntegratedGradients(f).attribute(inp, baselines=baseline, n_steps=ig_steps, internal_batch_size=8)
    gxi = InputXGradient(f).attribute(inp)
    return {"integrated gradients": ig[0, 0].detach().numpy(), "gradient x input": gxi[0, 0].detach().numpy()}


# --------------------------------------------------------------------------- boundary walk


@dataclass
class Walk:
    class_a: str
    class_b: str
    steps: list[float]  # distance along the unit normal, latent units
    probabilities: list[float]  # of class_b
    spectrograms: list[np.ndarray]  # decoded, (hops, mels) each


@torch.no_grad()
def boundary_walk(model: SoundscapeVAE, z: np.ndarray, y: np.ndarray, class_a: str, class_b: str,
                  n_steps: int = 9, frames: int = 1) -> Walk:  # fmt: skip
    """Walk from class A's mean latent along the A-vs-B hyperplane's unit normal to as far past the boundary."""
    pair = np.isin(y, [class_a, class_b])
    score = fit_linear(z[pair], y[pair], positive=class_b)
    norm = float(np.linalg.norm(score.w))
    normal = score.w / norm
    start = z[y == class_a].mean(0)
    distance = -float(score(start)) / norm  # signed distance to the boundary along the normal
    end = 2 * distance if distance > 0 else 1.0
    steps = np.linspace(0, end, n_steps)
    points = start[None] + steps[:, None] * normal[None]
    probs = 1 / (1 + np.exp(-score(points)))
    zt = torch.as_tensor(points, dtype=torch.float32)[:, None].repeat(1, frames, 1)  # (steps, frames, D)
    decoded = model.eval().decode(zt)[:, 0].numpy()
    return Walk(class_a, class_b, steps.tolist(), probs.tolist(), list(decoded))


# --------------------------------------------------------------------------- projections


def projections(features: np.ndarray, meta: pd.DataFrame, out: Path, label_columns: list[str], seed: int = 0,
                max_labels: int = 6) -> list[dict]:  # fmt: skip
    """PCA and UMAP of the features, one figure per method and label (the first ``max_labels`` with 2-12 values)."""
    from sklearn.decomposition import PCA

    x = StandardScaler().fit_transform(features)
    coords = {"PCA": PCA(2, random_state=seed).fit_transform(x)}
    if len(x) >= 6:
        import umap  # slow import (numba): only here

        coords["UMAP"] = umap.UMAP(n_neighbors=min(15, len(x) - 1), random_state=seed, n_jobs=1).fit_transform(x)
    images = []
    useful = [c for c in label_columns if 2 <= meta[c].astype(str).nunique() <= 12][:max_labels]
    for col in useful:
        values = meta[col].astype(str)
        for method, c in coords.items():
            name = f"projection_{method.lower()}_{col}.png"
            plots.projection(c, values, f"{method} of moments descriptors, by {col}", out / name)
            images.append({"method": method, "label": col, "image": name})
    return images


# --------------------------------------------------------------------------- all of it


def interpret(recs: Units, model: SoundscapeVAE, spec: SpectrogramConfig, root: Path, target: str, out: Path,
              run_info: dict | None = None, recording: str | None = None, classes: tuple[str, str] | None = None,
              seed: int = 0) -> dict:  # fmt: skip
    """Write every interpretation figure into ``out`` and return (and save) interpretation.json."""
    out.mkdir(parents=True, exist_ok=True)
    meta = recs.meta
    if target not in meta.columns:
        raise ValueError(f"no label column {target!r}")
    labelled = meta[target].notna() & (meta[target].astype(str) != "")
    y = meta[target].astype(str).to_numpy()
    z = TimeAveraged().fit_transform(recs.frames)
    counts = pd.Series(y[labelled]).value_counts()
    if len(counts) < 2:
        raise ValueError(f"{target!r} needs at least two classes to interpret")
    class_a, class_b = classes or (counts.index[0], counts.index[1])
    info: dict = {"target": target, "classes": [class_a, class_b]}

    val = (run_info or {}).get("data", {}).get("val_recordings", [])
    info["reconstruction"] = reconstruction_metrics(model, root, val, spec, out) if val else None

    # saliency: a recording of class B (or the one asked for), its first 8 frames
    path_col = "path" if "path" in meta.columns else "first_recording"
    chosen = recording or meta.loc[labelled & (meta[target].astype(str) == class_b), path_col].iloc[0]
    score = fit_linear(z[labelled], y[labelled], positive=class_b)
    x = first_clip(root / chosen, root, spec, max_frames=8)
    maps = saliency_maps(model, x, score)
    plots.saliency(x.numpy(), maps, f"{chosen}: what raises the score of {target} = {class_b}", out / "saliency.png")
    np.savez_compressed(out / "saliency.npz", input=x.numpy(), **{k.replace(" ", "_"): v for k, v in maps.items()})
    info["saliency"] = {"recording": chosen, "class": class_b, "image": "saliency.png",
                        "methods": list(maps), "finite": bool(all(np.isfinite(m).all() for m in maps.values()))}  # fmt: skip

    walk = boundary_walk(model, z[labelled], y[labelled], class_a, class_b)
    plots.boundary_walk(walk.spectrograms, walk.probabilities, walk.steps,
                        f"{target}: from the mean of {class_a} across the boundary to {class_b}", class_b,
                        out / "boundary_walk.png")  # fmt: skip
    info["boundary_walk"] = {"from": class_a, "to": class_b, "steps": walk.steps, "probabilities": walk.probabilities,
                             "image": "boundary_walk.png"}  # fmt: skip

    label_cols = [c for c in meta.columns if c not in ("unit", "path", "first_recording", "start_time", "window_start",
                                                       "n_frames", "n_recordings")]  # fmt: skip
    moments = MixtureMoments().fit_transform(recs.frames)
    info["projections"] = projections(moments, meta, out, [target] + [c for c in label_cols if c != target], seed)
    (out / "interpretation.json").write_text(json.dumps(info, indent=2, default=float) + "\n")
    return info
