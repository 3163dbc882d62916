"""Figures (matplotlib, written as PNG): confusion matrices, spectrograms, saliency, walks, projections.

Figures are made with matplotlib's object API, not pyplot: files only, no window,
and the user's own backend (a notebook's, say) is left as it was.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ecovae.spectrogram import SpectrogramConfig, mel_frequencies

SPEC = SpectrogramConfig()


def _subplots(*grid: int, figsize: tuple[float, float], **kw):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kw)


def _save(fig: Figure, path: Path, dpi: int = 110, quality: int = 85) -> Path:
    # Spectrogram figures go to JPEG (.jpg): their noise makes PNGs of a megabyte; lines and text stay PNG.
    fig.savefig(
        path, dpi=dpi, bbox_inches="tight", **({"pil_kwargs": {"quality": quality}} if path.suffix == ".jpg" else {})
    )
    return path


def confusion(cm: np.ndarray, classes: list[str], title: str, *, path: Path) -> Path:
    """Counts in each cell, colour by the row-normalised rate."""
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = 1.6 + 0.55 * len(classes)
    fig, ax = _subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{norm[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="row-normalised")
    return _save(fig, path)


def _spec_axes(ax, spec: np.ndarray, title: str, cmap: str = "magma", **kw):
    """A (hops, mels) array drawn with time in seconds and mel-bin centre frequencies in Hz."""
    seconds = spec.shape[0] * SPEC.hop_length / SPEC.sample_rate
    im = ax.imshow(spec.T, origin="lower", aspect="auto", cmap=cmap, extent=[0, seconds, 0, spec.shape[1]], **kw)
    freqs = mel_frequencies(SPEC)
    ticks = np.linspace(0, spec.shape[1] - 1, 5).astype(int)
    ax.set_yticks(ticks + 0.5, [f"{freqs[t] / 1000:.1f}k" for t in ticks])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    ax.set_title(title, fontsize=9)
    return im


def reconstruction(x: np.ndarray, recon: np.ndarray, title: str, *, path: Path) -> Path:
    """Input, reconstruction and error side by side."""
    fig, axes = _subplots(1, 3, figsize=(14, 3.2))
    lo, hi = np.percentile(x, [1, 99.5])
    for ax, arr, name in zip(axes[:2], (x, recon), ("input log-mel", "reconstruction"), strict=True):
        fig.colorbar(_spec_axes(ax, arr, name, vmin=lo, vmax=hi), ax=ax)
    err = recon - x
    lim = np.percentile(np.abs(err), 99)
    fig.colorbar(
        _spec_axes(axes[2], err, "error (reconstruction - input)", cmap="RdBu_r", vmin=-lim, vmax=lim), ax=axes[2]
    )
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def saliency(x: np.ndarray, maps: dict[str, np.ndarray], title: str, *, path: Path) -> Path:
    """The spectrogram, then each attribution map over it (red raises the class score, blue lowers it)."""
    fig, axes = _subplots(1 + len(maps), 1, figsize=(12, 2.6 * (1 + len(maps))))
    fig.colorbar(_spec_axes(axes[0], x, "input log-mel"), ax=axes[0])
    for ax, (name, m) in zip(axes[1:], maps.items(), strict=True):
        lim = np.percentile(np.abs(m), 99.5) or 1.0
        _spec_axes(ax, x, name, cmap="gray")
        seconds = m.shape[0] * SPEC.hop_length / SPEC.sample_rate
        im = ax.imshow(
            m.T,
            origin="lower",
            aspect="auto",
            cmap="RdBu_r",
            vmin=-lim,
            vmax=lim,
            alpha=0.75,
            extent=[0, seconds, 0, m.shape[1]],
        )
        fig.colorbar(im, ax=ax, label="attribution")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def boundary_walk(
    specs: list[np.ndarray], diffs: list[np.ndarray], probs: list[float], *, title: str, class_b: str, path: Path
) -> Path:
    """Decoded spectrograms along the walk (top) and each one's difference from the start (bottom, dB),
    each with the classifier's probability of ``class_b``."""
    n = len(specs)
    fig, axes = _subplots(2, n, figsize=(1.9 * n, 6.2), sharey=True, squeeze=False, gridspec_kw={"hspace": 0.35})
    lo, hi = np.percentile(np.concatenate(specs), [1, 99.5])
    db = 20 / np.log(10)
    lim = max(float(np.percentile(np.abs(np.concatenate(diffs)) * db, 99.5)), 1e-3)
    for i in range(n):
        _spec_axes(
            axes[0, i], specs[i], ("start: " if i == 0 else "") + f"p({class_b})={probs[i]:.2f}", vmin=lo, vmax=hi
        )
        im = _spec_axes(axes[1, i], diffs[i] * db, "difference from start", cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[0, i].set_xlabel("")
        axes[1, i].set_xlabel("s")
        if i:
            axes[0, i].set_ylabel("")
            axes[1, i].set_ylabel("")
    fig.colorbar(im, ax=axes[1, :].tolist(), fraction=0.02, label="dB (red: more energy than at the start)")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def band_change(per_mel_db: np.ndarray, coarse: dict[str, float], bands: dict, *, title: str, path: Path) -> Path:
    """Where the energy moves along the walk: change per mel band against frequency, coarse bands shaded."""
    freqs = mel_frequencies(SPEC)[: len(per_mel_db)]
    fig, ax = _subplots(figsize=(8, 3.2))
    ax.axhline(0, color="0.6", lw=0.8)
    ax.plot(freqs, per_mel_db, "o-", ms=3, color="#335")
    for k, (name, (lo, hi)) in enumerate(bands.items()):
        if name in coarse:
            ax.axvspan(max(lo, freqs[0]), min(hi, freqs[-1]), color=("#eef" if k % 2 else "#efe"), zorder=0)
            ax.text(
                np.sqrt(max(lo, freqs[0]) * min(hi, freqs[-1])),
                ax.get_ylim()[1],
                f"{name}\n{coarse[name]:+.1f} dB",
                ha="center",
                va="top",
                fontsize=8,
            )
    ax.set_xscale("log")
    ax.set_xlabel("frequency (Hz)")
    ax.set_ylabel("change (dB, mean over time)")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def saliency_grid(grid: np.ndarray, bands: list[str], frame_seconds: float, *, title: str, path: Path) -> Path:
    """Attribution summed per frame (columns) and coarse band (rows), with the numbers."""
    fig, ax = _subplots(figsize=(1.2 + 0.9 * grid.shape[0], 2.8))
    lim = float(np.abs(grid).max()) or 1.0
    im = ax.imshow(grid.T, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    for (t, b), v in np.ndenumerate(grid):
        ax.text(
            t, b, f"{v:.2g}", ha="center", va="center", fontsize=7, color="white" if abs(v) > 0.6 * lim else "black"
        )
    ax.set_yticks(range(len(bands)), bands)
    ax.set_xticks(range(grid.shape[0]), [f"{t * frame_seconds:.1f}" for t in range(grid.shape[0])])
    ax.set_xlabel("frame start (s)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="attribution")
    return _save(fig, path)


def projection(coords: np.ndarray, labels, title: str, *, path: Path) -> Path:
    labels = np.asarray(labels).astype(str)
    fig, ax = _subplots(figsize=(5.5, 4.5))
    for c in sorted(set(labels)):
        m = labels == c
        ax.scatter(coords[m, 0], coords[m, 1], s=14, label=c, alpha=0.8)
    ax.legend(fontsize=7, markerscale=1.2, loc="best")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


def training_curves(metrics, path: Path) -> Path:
    """Negative ELBO, reconstruction and KL by step, training and validation."""
    fig, axes = _subplots(1, 3, figsize=(14, 3.2))
    for ax, key in zip(axes, ("neg_elbo", "recon_nll", "kl"), strict=True):
        for split, style in (("train", "-"), ("val", "o-")):
            col = f"{split}/{key}"
            if col in metrics:
                d = metrics.dropna(subset=[col])
                ax.plot(d["step"], d[col], style, label=split, ms=3)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(key.replace("_", " "), fontsize=10)
        ax.legend()
    return _save(fig, path)


def novelty_histogram(scores: np.ndarray, top: int, name: str, *, path: Path) -> Path:
    """Frames by novelty score, the ``top`` most unusual marked."""
    fig, ax = _subplots(figsize=(6, 2.6))
    ax.hist(scores, bins=min(80, max(10, len(scores) // 20)), color="0.5")
    if len(scores):
        cut = np.sort(scores)[-min(top, len(scores))]
        ax.axvline(cut, color="C3", lw=1, label=f"top {min(top, len(scores))}")
        ax.legend(fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel(f"{name.replace('_', ' ')} (higher: rarer)")
    ax.set_ylabel("frames")
    return _save(fig, path)


def excerpt(audio: np.ndarray, rate: int, frame: tuple[float, float], *, title: str, path: Path) -> Path:
    """A small spectrogram of an excerpt (dB, 0 to rate/2), the frame it stands for between dashed lines."""
    fig, ax = _subplots(figsize=(3.4, 1.7))
    if len(audio) >= 512:
        power, _, _, image = ax.specgram(audio, NFFT=512, Fs=rate, noverlap=384, cmap="magma", scale="dB")
        top = 10 * np.log10(power.max() + 1e-30)
        image.set_clim(top - 70, top)  # 70 dB below the loudest cell: the excerpt's own range
    for t in frame:
        ax.axvline(t, color="w", ls="--", lw=0.8)
    ax.set_yticks([0, 4000, 8000, 12000], ["0", "4", "8", "12"])
    ax.set_ylabel("kHz", fontsize=7)
    ax.set_xlabel("s", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=7)
    return _save(fig, path, dpi=80, quality=80)


def diel(
    image: np.ndarray, days: list[str], profile: dict, *, title: str, path: Path, ylim: tuple | None = None
) -> Path:
    """Days at a glance: ``image`` (days, bins over 24 h, RGB in [0, 1]; NaN where nothing was recorded) above
    each component's median and interquartile range by hour (``profile``: hours, median and q25/q75 per
    component); ``ylim`` one scale for every group's profile, so that sites compare by eye."""
    height = 0.9 + 0.22 * len(days)
    fig, (top, bottom) = _subplots(2, 1, figsize=(7.5, height + 2.0), height_ratios=[height, 2.0])
    shown = np.where(np.isnan(image), 0.92, image)  # light grey: not recorded
    top.imshow(shown, aspect="auto", extent=(0, 24, len(days) - 0.5, -0.5), interpolation="nearest")
    top.set_yticks(range(len(days)), days, fontsize=7)
    top.set_xticks(range(0, 25, 3))
    top.set_xlim(0, 24)
    top.set_title(title, fontsize=9)
    top.set_xlabel("time of day (h); red, green, blue = principal components 1, 2, 3 of mu", fontsize=8)
    hours = np.asarray(profile["hours"])
    for k, colour in enumerate(("tab:red", "tab:green", "tab:blue")):
        med, lo, hi = (np.asarray(profile[key][k], float) for key in ("median", "q25", "q75"))
        bottom.fill_between(hours, lo, hi, color=colour, alpha=0.2, lw=0)
        bottom.plot(hours, med, color=colour, marker=".", lw=1, label=f"PC{k + 1}")
    bottom.set_xlim(0, 24)
    bottom.set_xticks(range(0, 25, 3))
    bottom.set_xlabel("hour of day", fontsize=8)
    bottom.set_ylabel("component (median, IQR)", fontsize=8)
    if ylim is not None:
        bottom.set_ylim(*ylim)
    bottom.legend(fontsize=7, ncol=3)
    return _save(fig, path)
