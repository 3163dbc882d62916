"""Interpretation: reconstructions, saliency maps, walks across the decision boundary, projections.

* Reconstruction metrics on the run's held-out recordings (per-pixel MSE and
  MAE, Gaussian log-likelihood, KL, negative ELBO) and input | reconstruction
  | error images.
* Saliency: the linear classifier's score for a class, as a function of the
  input log-mel through the encoder (score = w . mean_t mu_t + b), attributed to
  time-frequency cells by integrated gradients smoothed over noisy inputs
  (SmoothGrad) and gradient x input, both from the stretch's own steady
  background, summed into a coarse grid of frames x bands; on the most active
  stretch of the recordings the classifier is surest of.
* Boundary walk: from one class's mean latent, along the unit normal of the
  logistic-regression hyperplane (A vs B) until the classifier gives the other
  class p = 0.1 ... 0.9, each step decoded to a spectrogram, shown with its
  difference from the start, the change per mel band, and as sound (mel
  inversion, Griffin-Lim) to listen to.
* Exemplars to listen to: for each class, the frames closest to its mean
  latent and those of its typical frames the classifier is most sure of, with 1.5 s either side, as
  compressed audio (Ogg Vorbis, 24 kHz) beside a spectrogram.
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
from sklearn.preprocessing import StandardScaler

from ecovae import plots
from ecovae.audio import BadAudio, open_recording
from ecovae.descriptors import MixtureMoments, TimeAveraged, Units
from ecovae.evaluate import linear_classifier
from ecovae.excerpts import write_excerpts
from ecovae.files import safe_name
from ecovae.latents import silent_frames, value_columns
from ecovae.logmel_cache import cache_survey
from ecovae.model import SoundscapeVAE, mean_loss
from ecovae.outputs import INTERPRETATION_FILE
from ecovae.spectrogram import SpectrogramConfig
from ecovae.survey import Survey, as_survey, recording_clips

log = logging.getLogger(__name__)

BANDS = {"below 1 kHz": (0, 1000), "1-2 kHz": (1000, 2000), "2-8 kHz": (2000, 8000), "above 8 kHz": (8000, 1e9)}
DB_PER_NEPER = 20 / np.log(10)  # the log-mel is a natural log of magnitude


@dataclass
class LinearScore:
    """A linear function of the time-averaged latent: w . z + b, in the latent's own units."""

    w: np.ndarray
    b: float

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return z @ self.w + self.b


def fit_linear(z: np.ndarray, y: np.ndarray, positive: str) -> LinearScore:
    """Logistic regression (on standardised features) of ``positive`` vs the rest, mapped back to raw units."""
    pipe = linear_classifier().fit(z, y == positive)
    scaler, lr = pipe[0], pipe[-1]
    w = lr.coef_[0] / scaler.scale_
    return LinearScore(w, float(lr.intercept_[0] - np.sum(lr.coef_[0] * scaler.mean_ / scaler.scale_)))


# --------------------------------------------------------------------------- reconstruction


def first_clip(rec_path: Path, root: Path, spec: SpectrogramConfig, *, max_frames: int | None = None) -> torch.Tensor:
    """The first clip's log-mel, (hops, mels), optionally cut to whole frames."""
    x = recording_clips(open_recording(rec_path, root), spec, max_clips=1)[0].logmel
    if max_frames:
        x = x[: max_frames * spec.frame_hops]
    return x


@torch.no_grad()
def reconstruction_metrics(
    model: SoundscapeVAE,
    recordings: Survey,
    *,
    out: Path,
    n_images: int = 3,
    seed: int = 0,
) -> dict:
    """Per-pixel MSE and MAE, Gaussian log-likelihood, KL and negative ELBO per frame on held-out recordings
    (``recordings``: the survey of those alone, :meth:`~ecovae.survey.Survey.subset`)."""
    torch.manual_seed(seed)
    spec = recordings.spec
    recs = cache_survey(recordings)  # read once for training: not decoded again
    # a cached clip is read from disk by slicing it whole
    m, frames = mean_loss(model, (clip[0 : clip.shape[0]][None, None] for rec in recs for clip in rec.clips))
    if not frames:
        return {"frames": 0, "images": []}
    images = []
    for rec in [r for r in recs if r.clips][:n_images]:
        x = rec.clips[0][: 8 * spec.frame_hops]
        recon, _, _ = model(x[None, None], sample=False)
        name = f"reconstruction_{len(images)}.jpg"
        plots.reconstruction(x.numpy(), recon[0, 0].numpy(), rec.relpath, path=out / name)
        images.append({"path": rec.relpath, "image": name})
    return {
        "recordings": len(recordings.files),
        "frames": frames,
        "mse_per_pixel": m["mse"],
        "mae_per_pixel": m["mae"],
        "gaussian_log_likelihood_per_frame": -m["recon_nll"],
        "kl_per_frame": m["kl"],
        "neg_elbo_per_frame": m["neg_elbo"],
        "images": images,
    }


# --------------------------------------------------------------------------- saliency

SALIENCY_CANDIDATES = 8  # recordings of the class, the classifier's surest, whose frames are looked through
SALIENCY_FRAMES = 8
AUDIBLE_DB = 1.0  # a walk changing no band by this much is too faint to hear


def activity(logmel: torch.Tensor) -> float:
    """How much a stretch of log-mel holds: each band's spread over time, averaged (0 for steady noise)."""
    return float(logmel.std(0).mean())


def saliency_excerpt(paths: list[str], root: Path, spec: SpectrogramConfig) -> tuple[str, torch.Tensor, dict]:
    """(recording, its :data:`SALIENCY_FRAMES` frames, where and how active) of the most active stretch among the
    first clips of ``paths``: the map then shows what a sound contributes, not the frame grid on steady noise."""
    hops = SALIENCY_FRAMES * spec.frame_hops
    best: tuple | None = None
    for rel in paths:
        try:
            clip = recording_clips(open_recording(root / rel, root), spec, max_clips=1)[0].logmel
        except BadAudio as e:
            log.warning("saliency: passed over %s (%s)", rel, e.reason)
            continue
        starts = range(0, max(1, clip.shape[0] - hops + 1), spec.frame_hops)
        for start in starts:
            a = activity(clip[start : start + hops])
            if best is None or a > best[3]:
                best = (rel, clip[start : start + hops], start, a)
    if best is None:
        raise ValueError(f"no readable recording for the saliency map among {paths[:3]}")
    rel, x, start, a = best
    return rel, x, {"start_s": start / spec.frame_hops * spec.frame_seconds, "activity": a}


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


def saliency_maps(
    model: SoundscapeVAE,
    x: torch.Tensor,
    score: LinearScore,
    *,
    ig_steps: int = 16,
    smooth_samples: int = 8,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """What in ``x`` (hops, mels), beyond its own steady background, raises the score; each map (hops, mels).

    The reference is the stretch's per-band median over time: its background, so that a sound is
    measured against the soundscape it sits in (from digital silence, every background cell takes a
    share; tests/test_first_hour.py plants a sound to check). Integrated gradients from that reference, averaged over noisy copies of
    the input (SmoothGrad, Captum's NoiseTunnel: the speckle of one gradient averages out), and the
    gradient times the input's departure from it.
    """
    from captum.attr import IntegratedGradients, NoiseTunnel

    torch.manual_seed(seed)
    f = ClassScore(model.eval(), score)
    inp = x[None, None].clone().requires_grad_(True)
    background = x.median(0).values.expand_as(x)[None, None].clone()
    noise = 0.15 * float(x.std())  # a few percent of the log-mel's range
    ig = NoiseTunnel(IntegratedGradients(f)).attribute(
        inp,
        baselines=background,
        n_steps=ig_steps,
        internal_batch_size=8,
        nt_type="smoothgrad",
        nt_samples=smooth_samples,
        nt_samples_batch_size=1,
        stdevs=noise,
    )
    (grad,) = torch.autograd.grad(f(inp).sum(), inp)
    return {
        "integrated gradients (SmoothGrad)": ig[0, 0].detach().numpy(),
        "gradient x (input - background)": (grad * (inp - background))[0, 0].detach().numpy(),
    }


def coarse_grid(attribution: np.ndarray, spec: SpectrogramConfig) -> np.ndarray:
    """Attribution summed into (frames, coarse bands): which 1.536 s and which band raise the score."""
    from ecovae.spectrogram import mel_frequencies

    freqs = mel_frequencies(spec)
    n = attribution.shape[0] // spec.frame_hops
    per_frame = attribution[: n * spec.frame_hops].reshape(n, spec.frame_hops, -1).sum(1)  # (frames, mels)
    return np.stack([per_frame[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in BANDS.values()], 1)


# --------------------------------------------------------------------------- boundary walk


@dataclass
class Walk:
    class_a: str
    class_b: str
    steps: list[float]  # distance along the unit normal from class A's mean, latent units
    probabilities: list[float]  # of class_b: the start's, then the requested ones
    spectrograms: list[np.ndarray]  # decoded, (hops, mels) each

    @property
    def differences(self) -> list[np.ndarray]:
        """Each step's decoded spectrogram minus the start's: where the walk adds or removes energy."""
        return [s - self.spectrograms[0] for s in self.spectrograms]


WALK_PROBABILITIES = (0.1, 0.25, 0.5, 0.75, 0.9)


def walk_points(
    score: LinearScore, start: np.ndarray, probabilities=WALK_PROBABILITIES
) -> tuple[np.ndarray, np.ndarray]:
    """Distances along the score's unit normal, and the points, where p = sigmoid(score) takes each
    requested value beyond the start's own (the start comes first). The score is linear: exact."""
    norm = float(np.linalg.norm(score.w))
    p0 = 1 / (1 + np.exp(-score(start)))
    wanted = [p for p in probabilities if p > p0] or [max(probabilities)]
    logits = np.log(np.asarray(wanted)) - np.log1p(-np.asarray(wanted))
    distances = np.r_[0.0, (logits - score(start)) / norm]
    return distances, start[None] + distances[:, None] * (score.w / norm)[None]


@torch.no_grad()
def boundary_walk(
    model: SoundscapeVAE,
    z: np.ndarray,
    y: np.ndarray,
    *,
    class_a: str,
    class_b: str,
    probabilities=WALK_PROBABILITIES,
    frames: int = 2,
) -> Walk:
    """Walk from class A's mean latent along the A-vs-B hyperplane's unit normal until the classifier
    gives class B each requested probability (to 0.9: confident on the other side); decode each step."""
    pair = np.isin(y, [class_a, class_b])
    score = fit_linear(z[pair], y[pair], positive=class_b)
    distances, points = walk_points(score, z[y == class_a].mean(0), probabilities)
    probs = 1 / (1 + np.exp(-score(points)))
    zt = torch.as_tensor(points, dtype=torch.float32)[:, None].repeat(1, frames, 1)  # (steps, frames, D)
    decoded = model.eval().decode(zt)[:, 0].numpy()
    return Walk(class_a, class_b, distances.tolist(), probs.tolist(), spectrograms=list(decoded))


def band_change(walk: Walk, spec: SpectrogramConfig) -> tuple[np.ndarray, dict[str, float]]:
    """Change from start to end of the walk, per mel band (dB, mean over time) and per coarse band."""
    from ecovae.spectrogram import mel_frequencies

    per_mel = walk.differences[-1].mean(0) * DB_PER_NEPER
    freqs = mel_frequencies(spec)
    coarse = {
        name: float(per_mel[(freqs >= lo) & (freqs < hi)].mean())
        for name, (lo, hi) in BANDS.items()
        if ((freqs >= lo) & (freqs < hi)).any()
    }
    return per_mel, coarse


def mel_to_audio(logmel: np.ndarray, spec: SpectrogramConfig, n_iter: int = 32, *, seed: int = 0) -> np.ndarray:
    """Audio (spec.sample_rate) of a (hops, mels) log-mel spectrogram: mel inversion and Griffin-Lim phase.

    One sample per hop x hop length, finite. A sound to hear where energy moves, not the recording."""
    import librosa

    magnitude = np.exp(np.asarray(logmel, np.float64).T)  # (mels, hops): the mel of the STFT magnitude
    stft = librosa.feature.inverse.mel_to_stft(
        magnitude,
        sr=spec.sample_rate,
        n_fft=spec.n_fft,
        power=1.0,
        fmin=spec.f_min,
        fmax=min(spec.f_max, spec.sample_rate / 2),
    )
    stft = np.concatenate([stft, stft[:, -1:]], 1)  # librosa's centred frames: one more than our n // hop
    audio = librosa.griffinlim(
        stft,
        n_iter=n_iter,
        hop_length=spec.hop_length,
        win_length=spec.win_length,
        window="hann",
        center=True,
        length=logmel.shape[0] * spec.hop_length,
        random_state=seed,
    )
    return np.nan_to_num(audio).astype(np.float32)


def write_walk_audio(walk: Walk, spec: SpectrogramConfig, out: Path, *, rate: int = 32_000) -> list[str]:
    """Each step as Ogg Vorbis (``rate`` Hz: the mels end at 15 kHz), one gain for all steps so that
    loudness changes along the walk stay audible."""
    import soundfile as sf
    from scipy.signal import resample_poly

    sounds = [mel_to_audio(s, spec) for s in walk.spectrograms]
    sounds = [resample_poly(a, rate, spec.sample_rate).astype(np.float32) for a in sounds]
    fade = np.minimum(1, np.minimum(np.arange(len(sounds[0])), np.arange(len(sounds[0]))[::-1]) / (0.02 * rate))
    gain = 0.9 / max(float(np.max(np.abs(a))) for a in sounds) if any(np.any(a) for a in sounds) else 1.0
    names = []
    for i, a in enumerate(sounds):
        name = f"boundary_walk_{i}.ogg"  # Vorbis: a tenth of the 16-bit WAV, for a report of one file
        sf.write(out / name, (a * gain * fade[: len(a)]).astype(np.float32), rate, format="OGG", subtype="VORBIS")
        names.append(name)
    return names


def _spread(candidates: pd.DataFrame, order: np.ndarray, n: int) -> list[int]:
    """The first ``n`` rows in ``order``, at most one per recording (n different sounds, not one sound n times)."""
    chosen, seen = [], set()
    for i in order:
        path = candidates["path"].iloc[i]
        if path not in seen:
            chosen.append(int(i))
            seen.add(path)
        if len(chosen) == n:
            break
    return chosen


TYPICAL = 0.9  # "most sure" exemplars come from the class's frames this close to its mean (by quantile)


def exemplar_frames(
    frames: pd.DataFrame, classifier, target: str, *, per_class: int = 2, unusual: pd.DataFrame | None = None
) -> list[tuple]:
    """For each class of ``target``: the ``per_class`` frames nearest the class's mean latent, and the
    ``per_class`` frames the (time-averaged latent) ``classifier`` gives the class the highest probability
    among the class's typical ones (the ``TYPICAL`` fraction nearest its mean: a linear classifier is surest of
    a frame far out along its normal, such as a siren once in a survey, which is no exemplar of a class); one
    per recording, silent frames never, nor the survey's ``unusual`` frames (``path``, ``frame_in_recording``:
    ``novelty.unusual_frames``) or their neighbours, which are no one's exemplar. Returns
    ``(name, path, frame_offset_s, info)`` for ``write_excerpts``."""
    mu_cols = value_columns(frames, "vae")
    keep = frames[target].notna().to_numpy() & (frames[target].astype(str) != "").to_numpy() & ~silent_frames(frames)
    if unusual is not None and len(unusual):  # nor their neighbours, whose excerpts (1.5 s either side) play them
        odd = pd.MultiIndex.from_frame(
            pd.concat(
                [unusual[["path"]].assign(frame_in_recording=unusual["frame_in_recording"] + d) for d in (-1, 0, 1)]
            )
        )
        keep &= ~pd.MultiIndex.from_frame(frames[["path", "frame_in_recording"]]).isin(odd)
    frames = frames[keep]
    mu = frames[mu_cols].to_numpy(np.float64)
    y = frames[target].astype(str).to_numpy()
    proba = classifier.predict_proba(mu)
    classes = [str(c) for c in classifier.classes_]
    wanted = []
    for k, cls in enumerate(classes):
        own = np.flatnonzero(y == cls)
        if not len(own):
            continue
        of_class = frames.iloc[own]
        distance = np.linalg.norm(mu[own] - mu[own].mean(0), axis=1)
        typical = distance <= np.quantile(distance, TYPICAL)
        picks = {
            "nearest the class mean": (_spread(of_class, np.argsort(distance), per_class), distance),
            "classifier most sure": (
                _spread(of_class, np.argsort(-np.where(typical, proba[own, k], -1.0)), per_class),
                None,
            ),
        }
        for why, (chosen, dist) in picks.items():
            for i in chosen:
                row = of_class.iloc[i]
                extra = {
                    "class": cls,
                    "why": why,
                    "probability": float(proba[own[i], k]),
                    "distance": float(dist[i]) if dist is not None else None,
                }
                wanted.append((f"exemplars/exemplar_{len(wanted):03d}", row["path"], row["frame_offset_s"], extra))
    return wanted


def exemplars(
    frames: pd.DataFrame,
    classifier,
    *,
    target: str,
    survey: Survey,
    out: Path,
    per_class: int = 2,
    unusual: pd.DataFrame | None = None,
) -> list[dict]:
    """:func:`exemplar_frames`, each written as an excerpt to hear (Ogg and its spectrogram) under ``out``."""
    wanted = exemplar_frames(frames, classifier, target, per_class=per_class, unusual=unusual)
    return write_excerpts(survey.root, wanted, frame_s=survey.spec.frame_seconds, out=out)


# --------------------------------------------------------------------------- projections


def projections(
    features: np.ndarray,
    meta: pd.DataFrame,
    *,
    out: Path,
    label_columns: list[str],
    seed: int = 0,
    max_labels: int = 6,
) -> list[dict]:
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
            name = f"projection_{method.lower()}_{safe_name(col)}.png"
            plots.projection(c, values, f"{method} of moments descriptors, by {col}", path=out / name)
            images.append({"method": method, "label": col, "image": name})
    return images


# --------------------------------------------------------------------------- all of it


def interpret(
    recs: Units,
    model: SoundscapeVAE,
    *,
    recordings: Survey | Path | str,
    target: str,
    out: Path,
    run_info: dict | None = None,
    recording: str | None = None,
    classes: tuple[str, str] | None = None,
    seed: int = 0,
    frames: pd.DataFrame | None = None,
    unusual: pd.DataFrame | None = None,
) -> dict:
    """Write every interpretation figure into ``out`` and return (and save) interpretation.json; with the
    per-frame latents (``frames``), exemplars of each class to listen to (never among the ``unusual`` frames).

    ``recordings``: the survey (a :class:`~ecovae.survey.Survey` or its folder), read with the model's
    spectrogram settings (``model.spec``, or the survey's own)."""
    out.mkdir(parents=True, exist_ok=True)
    survey = as_survey(recordings)
    spec, meta = survey.spec, recs.meta
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
    info["reconstruction"] = reconstruction_metrics(model, survey.subset(val), out=out) if val else None
    score = fit_linear(z[labelled], y[labelled], positive=class_b)
    info["saliency"] = _saliency(
        model,
        survey,
        meta,
        z,
        y=y,
        labelled=labelled,
        score=score,
        class_b=class_b,
        target=target,
        recording=recording,
        out=out,
    )
    info["boundary_walk"] = _walk(
        model, z[labelled], y[labelled], (class_a, class_b), target=target, spec=spec, out=out
    )
    if frames is not None and target in frames.columns:
        classifier = linear_classifier().fit(z[labelled], y[labelled])
        info["exemplars"] = exemplars(frames, classifier, target=target, survey=survey, out=out, unusual=unusual)

    label_cols = [
        c
        for c in meta.columns
        if c not in ("unit", "path", "first_recording", "start_time", "window_start", "n_frames", "n_recordings")
    ]
    moments = MixtureMoments().fit_transform(recs.frames)
    wanted = [target] + [c for c in label_cols if c != target]
    info["projections"] = projections(moments, meta, out=out, label_columns=wanted, seed=seed)
    (out / INTERPRETATION_FILE).write_text(json.dumps(info, indent=2, default=float) + "\n")
    return info


def _saliency(model, survey, meta, z, y, labelled, score, class_b, target, recording, out) -> dict:  # noqa: PLR0913
    """Among the recordings of class B the classifier is surest of, the 8 frames that hold the most (stationary
    noise gives maps of the encoder's frame grid, not of a sound); or the recording asked for."""
    spec = survey.spec
    path_col = "path" if "path" in meta.columns else "first_recording"
    of_b = np.flatnonzero(labelled.to_numpy() & (y == class_b))
    surest = of_b[np.argsort(-score(z[of_b]), kind="stable")][: min(SALIENCY_CANDIDATES, max(3, len(of_b) // 4))]
    candidates = [recording] if recording else [str(meta[path_col].iloc[i]) for i in surest]
    chosen, x, activity = saliency_excerpt(candidates, survey.root, spec)
    maps = saliency_maps(model, x, score)
    grid = coarse_grid(maps["integrated gradients (SmoothGrad)"], spec)
    where = f"{chosen} from {activity['start_s']:.1f} s"
    plots.saliency(
        x.numpy(), maps, f"{where}: what raises the score of {target} = {class_b}", path=out / "saliency.jpg"
    )
    plots.saliency_grid(
        grid,
        list(BANDS),
        spec.frame_seconds,
        title=f"{where}: attribution per frame and band",
        path=out / "saliency_grid.png",
    )
    np.savez_compressed(
        out / "saliency.npz", input=x.numpy(), grid=grid, **{k.replace(" ", "_"): v for k, v in maps.items()}
    )
    return {
        "recording": chosen,
        "class": class_b,
        "image": "saliency.jpg",
        "grid_image": "saliency_grid.png",
        "probability": float(1 / (1 + np.exp(-score(z[of_b]).max()))) if recording is None else None,
        "start_s": activity["start_s"],
        "activity": activity["activity"],
        "candidates": len(candidates),
        "grid": {band: grid[:, i].tolist() for i, band in enumerate(BANDS)},
        "methods": list(maps),
        "finite": bool(all(np.isfinite(m).all() for m in maps.values())),
    }


def _walk(model, z, y, classes: tuple[str, str], target: str, spec: SpectrogramConfig, out: Path) -> dict:
    """The boundary walk from class A to B: its figures, the change per band, and its sound."""
    class_a, class_b = classes
    walk = boundary_walk(model, z, y, class_a=class_a, class_b=class_b)
    per_mel, coarse = band_change(walk, spec)
    plots.boundary_walk(
        walk.spectrograms,
        walk.differences,
        walk.probabilities,
        title=f"{target}: from the mean of {class_a} across the boundary to {class_b}",
        class_b=class_b,
        path=out / "boundary_walk.jpg",
    )
    plots.band_change(
        per_mel,
        coarse,
        BANDS,
        title=f"change from p({class_b})={walk.probabilities[0]:.2f} to {walk.probabilities[-1]:.2f}",
        path=out / "boundary_walk_bands.png",
    )
    return {
        "from": class_a,
        "to": class_b,
        "steps": walk.steps,
        "probabilities": walk.probabilities,
        "image": "boundary_walk.jpg",
        "bands_image": "boundary_walk_bands.png",
        "band_change_db": coarse,
        "largest_change_db": float(np.abs(per_mel).max()),
        # under ~1 dB in every band a listener hears no difference: the classes differ in what the decoder
        # barely renders, and the walk says so rather than offering sounds that seem to mean something
        "audible": bool(np.abs(per_mel).max() >= AUDIBLE_DB),
        "audio": write_walk_audio(walk, spec, out),
    }
