"""Training: Lightning owns the loop; this module holds the science and the run folder.

A run folder holds ``config.json`` (model, spectrogram and training settings),
``model.safetensors`` (weights, rewritten at every checkpoint), ``metrics.csv``
(every logged value of every attempt, joined), ``run.json`` (versions, data,
seed, hardware, wall time), ``checkpoints/`` (Lightning checkpoints for
``--resume``) and ``logs/`` (one CSV log per attempt).

Recordings are split into training and validation *by recording*, never by
frame, with the seed fixed and recorded.

Several devices or nodes (``devices``, ``strategy="ddp"``, ``num_nodes``):
every process runs this same function, Lightning's distributed sampler gives
each process its own share of the training windows (each seen once per epoch
across processes), and only the first process writes checkpoints, weights,
metrics and the manifest. ``max_steps`` counts optimiser steps, each over
``batch_size`` windows per process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ecovae import __version__
from ecovae.audio import BadAudio, discover, open_recording
from ecovae.model import SoundscapeVAE, VAEConfig, preset
from ecovae.spectrogram import SpectrogramConfig, iter_clips

log = logging.getLogger(__name__)

CONFIG_FILE, WEIGHTS_FILE, RUN_FILE, METRICS_FILE = "config.json", "model.safetensors", "run.json", "metrics.csv"


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "full"
    max_steps: int = 20_000
    batch_size: int = 8
    window_frames: int = 39  # frames per training example (a whole clip by default)
    learning_rate: float = 4e-5  # cosine decay to zero over max_steps
    weight_decay: float = 0.01
    val_fraction: float = 0.15
    seed: int = 0
    checkpoint_every: int = 500  # steps
    val_every: int = 500  # steps
    log_every: int = 10  # steps
    num_workers: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    precision: str = "32-true"
    strategy: str = "auto"  # Lightning strategy: ddp for several devices or nodes
    num_nodes: int = 1


TRAIN_PRESETS = {
    "full": TrainConfig(),
    "tiny": TrainConfig(
        preset="tiny", max_steps=300, batch_size=8, window_frames=2, learning_rate=3e-3,
        checkpoint_every=100, val_every=100,
    ),  # fmt: skip
}


# What a resumed run may change: where and how it runs, and for how long.
RESUMABLE = (
    "max_steps", "num_workers", "accelerator", "devices", "precision", "checkpoint_every", "val_every", "log_every",
    "strategy", "num_nodes",
)  # fmt: skip


def train_preset(name: str, **overrides) -> TrainConfig:
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(TRAIN_PRESETS)}")
    return replace(TRAIN_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


# --------------------------------------------------------------------------- data


@dataclass
class LoadedRecording:
    relpath: str
    labels: dict[str, str]
    clips: list[torch.Tensor]  # each (hops, mels), whole frames

    @property
    def n_frames(self) -> int:
        return sum(c.shape[0] for c in self.clips) // SpectrogramConfig.frame_hops


@dataclass
class SurveyData:
    recordings: list[LoadedRecording]
    skipped: dict[str, str]  # relpath -> reason
    n_files: int
    seconds: float


def load_survey(
    root: Path | str, labels_csv: Path | str | None = None, spec: SpectrogramConfig = SpectrogramConfig(),
    progress: bool = True,
) -> SurveyData:
    """Log-mel clips of every readable recording under root; broken files are logged and skipped."""
    root = Path(root)
    files, _, labels = discover(root, labels_csv)
    if not files:
        raise FileNotFoundError(f"{root}: no audio files (looked for .wav, .flac, .ogg, .mp3)")
    recordings, skipped, seconds = [], {}, 0.0
    from ecovae.progress import file_progress

    with file_progress(len(files), "Spectrograms", enabled=progress) as advance:
        for path in files:
            rel = path.relative_to(root if root.is_dir() else root.parent).as_posix()
            try:
                rec = open_recording(path, root, labels.get(rel, {}))
                clips = [c.logmel for c in iter_clips(rec, spec)]
                if not clips:
                    raise BadAudio(path, f"shorter than one frame ({spec.frame_seconds:.3f} s)")
                recordings.append(LoadedRecording(rec.relpath, rec.labels, clips))
                seconds += rec.duration_s
            except BadAudio as e:
                log.warning("skipped %s", e)
                skipped[rel] = e.reason
            advance()
    return SurveyData(recordings, skipped, len(files), seconds)


def split_by_recording(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of training and validation recordings (at least one of each when n >= 2)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = 0 if n < 2 else min(n - 1, max(1, round(val_fraction * n)))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


class WindowDataset(Dataset):
    """Windows of ``window_frames`` whole frames from clips: every frame-aligned start."""

    def __init__(self, recordings: list[LoadedRecording], window_frames: int, frame_hops: int, stride: int = 1):
        self.window_hops = window_frames * frame_hops
        self.clips = [c for r in recordings for c in r.clips]
        self.index = [
            (i, s * frame_hops)
            for i, c in enumerate(self.clips)
            for s in range(0, c.shape[0] // frame_hops - window_frames + 1, stride)
        ]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        clip, start = self.index[i]
        return self.clips[clip][start : start + self.window_hops].unsqueeze(0)  # (1, hops, mels)


def input_statistics(recordings: list[LoadedRecording]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mel-bin mean and standard deviation of the training log-mel."""
    total = sum(c.shape[0] for r in recordings for c in r.clips)
    s = sum(c.sum(0, dtype=torch.float64) for r in recordings for c in r.clips)
    s2 = sum((c.double() ** 2).sum(0) for r in recordings for c in r.clips)
    mean = s / total
    std = (s2 / total - mean**2).clamp_min(1e-6).sqrt()
    return mean.float(), std.float()


# --------------------------------------------------------------------------- the module


def _lightning_module_class():
    import lightning as L  # heavy: imported when training starts, not with the CLI

    class LitVAE(L.LightningModule):
        def __init__(self, model_config: dict, train_config: dict):
            super().__init__()
            self.save_hyperparameters()
            self.tcfg = TrainConfig(**train_config)
            self.model = SoundscapeVAE(VAEConfig.from_dict(model_config))

        def beta(self) -> float:
            cfg = self.model.cfg
            if cfg.kl_warmup_steps <= 0:
                return cfg.beta
            return cfg.beta * min(1.0, self.global_step / cfg.kl_warmup_steps)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            out = self.model.loss(batch, beta=self.beta())
            self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, prog_bar=False)
            self.log("loss", out["loss"].detach(), prog_bar=True, logger=False)
            return out["loss"]

        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            out = self.model.loss(batch)
            # sync_dist: with several processes, each validates a share; the logged value is their mean
            self.log_dict({f"val/{k}": v for k, v in out.items()}, batch_size=batch.shape[0], sync_dist=True)

        def configure_optimizers(self):
            opt = torch.optim.AdamW(
                [p for p in self.parameters() if p.requires_grad],
                lr=self.tcfg.learning_rate,
                weight_decay=self.tcfg.weight_decay,
            )
            total = max(1, self.tcfg.max_steps)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return LitVAE


def _export_callback_class():
    import lightning as L

    class ExportWeights(L.Callback):
        """Rewrite model.safetensors whenever a checkpoint is saved, so a killed run still has weights."""

        def __init__(self, run_dir: Path):
            self.run_dir = run_dir

        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            if trainer.is_global_zero:
                save_weights(pl_module.model, self.run_dir)

    return ExportWeights


# --------------------------------------------------------------------------- the run folder


def save_weights(model: SoundscapeVAE, run_dir: Path) -> None:
    from safetensors.torch import save_file

    tmp = run_dir / (WEIGHTS_FILE + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, run_dir / WEIGHTS_FILE)


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def init_run(run_dir: Path | str, mcfg: VAEConfig, tcfg: TrainConfig | None = None, seed: int = 0) -> Path:
    """A run folder holding an untrained model (config.json and model.safetensors).

    For benchmarks and tests: throughput does not depend on the weights. The input
    normalisation is set to typical log-mel values.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = SoundscapeVAE(mcfg)
    model.input_mean.fill_(-8.0)
    model.input_std.fill_(2.0)
    save_weights(model, run_dir)
    spec = SpectrogramConfig()
    config = {"model": mcfg.to_dict(), "spectrogram": spec.to_dict(), "train": asdict(tcfg or TrainConfig())}
    write_json(run_dir / CONFIG_FILE, config)
    return run_dir


def load_model(run_dir: Path | str, map_location: str = "cpu") -> tuple[SoundscapeVAE, SpectrogramConfig]:
    """The trained model of a run folder, from JSON and safetensors only (no pickle)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / CONFIG_FILE, run_dir / WEIGHTS_FILE
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing; is {run_dir} a run folder made by 'ecovae train'?")
    cfg = json.loads(cfg_path.read_text())
    model = SoundscapeVAE(VAEConfig.from_dict(cfg["model"]))
    model.load_state_dict(load_file(str(weights), device=map_location))
    return model.eval(), SpectrogramConfig(**cfg["spectrogram"])


def combine_metrics(run_dir: Path) -> Path | None:
    """Join the attempts' CSV logs into one metrics.csv, a resumed attempt replacing what it redid."""
    import pandas as pd

    parts = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    frames = [pd.read_csv(p) for p in parts if p.stat().st_size > 0]
    frames = [f for f in frames if len(f)]
    if not frames:
        return None
    kept = []
    for i, f in enumerate(frames):
        later = [g["step"].min() for g in frames[i + 1 :]]
        cut = min(later) if later else None
        kept.append(f if cut is None else f[f["step"] < cut])
    out = pd.concat(kept, ignore_index=True).sort_values("step", kind="stable")
    out.to_csv(run_dir / METRICS_FILE, index=False)
    return run_dir / METRICS_FILE


def hardware_info() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the SIMD kernels torch uses: AVX2, AVX512, ...
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def package_versions() -> dict:
    import importlib.metadata as md

    names = ["torch", "lightning", "numpy", "soundfile", "soxr", "librosa", "pandas", "pyarrow", "safetensors"]
    out = {"ecovae": __version__, "python": platform.python_version()}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            pass
    return out


@torch.no_grad()
def evaluate(model: SoundscapeVAE, dataset: Dataset, batch_size: int = 16, seed: int = 0) -> dict[str, float]:
    """Held-out negative ELBO and its parts, per frame (a fixed seed for the posterior samples)."""
    was_training = model.training
    model.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    totals: dict[str, float] = {}
    frames = 0
    try:
        for batch in DataLoader(dataset, batch_size=batch_size):
            n = batch.shape[0] * batch.shape[2] // model.cfg.frame_hops
            for k, v in model.loss(batch).items():
                totals[k] = totals.get(k, 0.0) + float(v) * n
            frames += n
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return {k: v / frames for k, v in totals.items()} if frames else {}


# --------------------------------------------------------------------------- train


def train(
    recordings: Path | str,
    run_dir: Path | str,
    tcfg: TrainConfig,
    mcfg: VAEConfig | None = None,
    labels_csv: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict | None:
    """Train a VAE on the recordings under ``recordings``; returns the run manifest.

    With ``resume``, the run's saved settings are used, except those in
    RESUMABLE, which are taken from ``tcfg`` (so --max-steps can extend a run).
    In a distributed run, processes other than the first return None.
    """
    import lightning as L
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    _quiet_lightning()

    t0 = time.time()
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last_ckpt = ckpt_dir / "last.ckpt"
    spec = SpectrogramConfig()
    if resume:
        if not last_ckpt.is_file():
            raise FileNotFoundError(f"{last_ckpt}: nothing to resume from")
        saved = json.loads((run_dir / CONFIG_FILE).read_text())
        mcfg = VAEConfig.from_dict(saved["model"])
        tcfg = replace(TrainConfig(**saved["train"]), **{k: getattr(tcfg, k) for k in RESUMABLE})
    elif rank_zero_only.rank == 0:  # (later processes of a distributed run start after the first wrote its files)
        if last_ckpt.exists():
            raise FileExistsError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
    if not resume:
        mcfg = mcfg or preset(tcfg.preset)
    run_dir.mkdir(parents=True, exist_ok=True)

    L.seed_everything(tcfg.seed, workers=True, verbose=False)
    data = load_survey(recordings, labels_csv, spec, progress=progress)
    if not data.recordings:
        raise RuntimeError(f"{recordings}: no usable recordings ({len(data.skipped)} skipped)")
    longest = max(r.n_frames for r in data.recordings)
    window = min(tcfg.window_frames, longest)
    if window < tcfg.window_frames:
        log.warning("recordings are short: training on windows of %d frames instead of %d", window, tcfg.window_frames)
    usable = [r for r in data.recordings if r.n_frames >= window]
    too_short = [r.relpath for r in data.recordings if r.n_frames < window]
    train_idx, val_idx = split_by_recording(len(usable), tcfg.val_fraction, tcfg.seed)
    train_recs = [usable[i] for i in train_idx]
    val_recs = [usable[i] for i in val_idx]
    train_ds = WindowDataset(train_recs, window, spec.frame_hops)
    val_ds = WindowDataset(val_recs, window, spec.frame_hops, stride=window)

    LitVAE = _lightning_module_class()
    module = LitVAE(mcfg.to_dict(), asdict(tcfg))
    heldout_initial = None
    if not resume:
        mean, std = input_statistics(train_recs)
        module.model.input_mean.copy_(mean)
        module.model.input_std.copy_(std)
        if rank_zero_only.rank == 0:
            heldout_initial = evaluate(module.model, val_ds, seed=tcfg.seed) if len(val_ds) else None
            write_json(
                run_dir / CONFIG_FILE,
                {"model": mcfg.to_dict(), "spectrogram": spec.to_dict(), "train": asdict(tcfg), "window_frames": window},
            )

    generator = torch.Generator().manual_seed(tcfg.seed)
    loader_kw = {"batch_size": tcfg.batch_size, "num_workers": tcfg.num_workers, "persistent_workers": tcfg.num_workers > 0}
    train_loader = DataLoader(
        train_ds, shuffle=True, drop_last=len(train_ds) > tcfg.batch_size, generator=generator, **loader_kw
    )
    val_loader = DataLoader(val_ds, **loader_kw) if len(val_ds) else None
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="step{step}", auto_insert_metric_name=False,
        every_n_train_steps=tcfg.checkpoint_every, save_last=True, save_top_k=1,
    )  # fmt: skip
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_steps=tcfg.max_steps,
        max_epochs=-1,
        accelerator=tcfg.accelerator,
        devices=_devices(tcfg.devices),
        num_nodes=tcfg.num_nodes,
        strategy=tcfg.strategy,
        precision=tcfg.precision,
        logger=CSVLogger(run_dir, name="logs"),
        callbacks=[checkpoint, _export_callback_class()(run_dir)] + ([TQDMProgressBar()] if progress else []),
        log_every_n_steps=tcfg.log_every,
        val_check_interval=tcfg.val_every if val_loader is not None else None,
        check_val_every_n_epoch=None,
        limit_val_batches=1.0 if val_loader is not None else 0,
        num_sanity_val_steps=0,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=False,
    )
    trainer.fit(module, train_loader, val_loader, ckpt_path=last_ckpt if resume else None, weights_only=True)

    # The end state: final weights, joined metrics, held-out scores and the manifest.
    trainer.save_checkpoint(last_ckpt, weights_only=False)  # every process calls it; the first writes
    if not trainer.is_global_zero:
        return None
    model = module.model.cpu()
    save_weights(model, run_dir)
    combine_metrics(run_dir)
    previous = json.loads((run_dir / RUN_FILE).read_text()) if resume and (run_dir / RUN_FILE).is_file() else {}
    if heldout_initial is None:
        heldout_initial = previous.get("heldout", {}).get("initial")
    heldout_final = evaluate(model, val_ds, seed=tcfg.seed) if len(val_ds) else None
    manifest = {
        "ecovae_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "recordings": str(Path(recordings).resolve()),
        "labels": str(labels_csv) if labels_csv else None,
        "seed": tcfg.seed,
        "global_step": int(trainer.global_step),
        "attempts": previous.get("attempts", 0) + 1,
        "wall_time_s": round(previous.get("wall_time_s", 0.0) + time.time() - t0, 2),
        "versions": package_versions(),
        "hardware": hardware_info(),
        "trainer": {"accelerator": str(trainer.accelerator.__class__.__name__), "devices": trainer.num_devices,
                    "num_nodes": trainer.num_nodes, "world_size": trainer.world_size,
                    "strategy": type(trainer.strategy).__name__, "precision": str(trainer.precision)},  # fmt: skip
        "data": {
            "files_found": data.n_files,
            "recordings_used": len(data.recordings),
            "hours": round(data.seconds / 3600, 4),
            "skipped": data.skipped,
            "too_short_for_window": too_short,
            "window_frames": window,
            "train_recordings": [r.relpath for r in train_recs],
            "val_recordings": [r.relpath for r in val_recs],
            "train_windows": len(train_ds),
            "val_windows": len(val_ds),
        },
        "heldout": {"initial": heldout_initial, "final": heldout_final},
    }
    write_json(run_dir / RUN_FILE, manifest)
    return manifest


def _quiet_lightning() -> None:
    """Lightning's start-up chatter and deprecation notes say nothing a user can act on."""
    import warnings

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def _devices(devices: str):
    return int(devices) if str(devices).isdigit() else devices
