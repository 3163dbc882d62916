"""Training: Lightning owns the loop; this module holds the science (the data, the objective's steps).

It writes the run folder (:mod:`ecovae.run`): config, weights at every
checkpoint, ``metrics.csv`` (every logged value of every attempt, joined),
``run.json`` (versions, data, seed, hardware, wall time), ``checkpoints/``
(Lightning checkpoints for ``--resume``) and ``logs/`` (one CSV log per attempt).

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
import time
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path

import lightning as L  # train is imported only to train (the CLI imports it lazily)
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Dataset

from ecovae import __version__
from ecovae.audio import RESAMPLER
from ecovae.files import atomic_file
from ecovae.host import hardware_info, package_versions
from ecovae.logmel_cache import CachedRecording, cache_survey, logmel_sums
from ecovae.model import SoundscapeVAE, VAEConfig, mean_loss, preset
from ecovae.progress import LineProgress, interactive, quiet_lightning
from ecovae.run import (
    CONFIG_FILE,
    METRICS_FILE,
    RUN_FILE,
    load_model,
    save_calibration,
    save_state,
    save_weights,
    weights_digest,
    write_json,
)
from ecovae.spectrogram import SpectrogramConfig
from ecovae.survey import Survey, as_survey

log = logging.getLogger(__name__)


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
    checkpoint_minutes: float = 10.0  # and on time: a killed run loses at most this much
    val_every: int = 500  # steps
    log_every: int = 10  # steps
    num_workers: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    # Lightning's. bf16-mixed is 1.2-1.8x faster on CPUs with bf16 but learns a different representation
    # (bench/README.md): opt in.
    precision: str = "32-true"
    strategy: str = "auto"  # Lightning strategy: ddp for several devices or nodes
    num_nodes: int = 1
    # The recipe beyond the rate (bench/README.md, "Pretraining"): all off by default, as the paper trained.
    warmup_steps: int = 0  # linear learning-rate warm-up before the cosine decay
    ema_decay: float = 0.0  # exponential moving average of the weights (0: none); what is saved and validated
    gain_db: float = 0.0  # augmentation: each window's level moved by up to this many dB
    response_db: float = 0.0  # augmentation: a smooth random recorder response of about this many dB (sd)
    mix_chance: float = 0.0  # augmentation: the chance that a window is mixed with another of the batch
    jitter: bool = False  # augmentation: windows start anywhere within a frame, not only on frame edges
    keep_weights: bool = False  # keep every checkpoint's weights as weights/step<N>.safetensors (learning curves)


TRAIN_PRESETS = {
    "full": TrainConfig(),
    "tiny": TrainConfig(
        preset="tiny",
        max_steps=300,
        batch_size=8,
        window_frames=2,
        learning_rate=3e-3,
        checkpoint_every=100,
        val_every=100,
    ),
    "small": TrainConfig(
        preset="small",
        max_steps=8000,
        batch_size=8,
        window_frames=2,
        learning_rate=2e-3,
        checkpoint_every=1000,
        val_every=1000,
    ),
}


# What a resumed run may change: where and how it runs, and for how long.
RESUMABLE = (
    "max_steps",
    "num_workers",
    "accelerator",
    "devices",
    "precision",
    "checkpoint_every",
    "val_every",
    "log_every",
    "strategy",
    "num_nodes",
    "checkpoint_minutes",
    "keep_weights",
)


def train_preset(name: str, **overrides) -> TrainConfig:
    """A preset's training settings with ``overrides`` (None: the preset's), checked: a count of steps,
    windows or frames is at least 1 and a rate is positive, so a typo never trains for ever or not at all.

    >>> train_preset("tiny", max_steps=50).max_steps
    50
    >>> train_preset("tiny", max_steps=0)
    Traceback (most recent call last):
    ValueError: --max-steps must be at least 1, not 0
    """
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(TRAIN_PRESETS)}")
    tcfg = replace(TRAIN_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    at_least = {
        "max_steps": 1,
        "batch_size": 1,
        "window_frames": 1,
        "checkpoint_every": 1,
        "val_every": 1,
        "log_every": 1,
        "num_workers": 0,
        "num_nodes": 1,
    }
    for key, low in at_least.items():
        if getattr(tcfg, key) < low:
            raise ValueError(f"--{key.replace('_', '-')} must be at least {low}, not {getattr(tcfg, key)}")
    for key in ("learning_rate", "checkpoint_minutes"):
        if not getattr(tcfg, key) > 0:
            raise ValueError(f"--{key.replace('_', '-')} must be positive, not {getattr(tcfg, key)}")
    for key in ("warmup_steps", "gain_db", "response_db"):
        if getattr(tcfg, key) < 0:
            raise ValueError(f"{key} must be at least 0, not {getattr(tcfg, key)}")
    for key in ("ema_decay", "mix_chance"):
        if not 0 <= getattr(tcfg, key) < 1:
            raise ValueError(f"{key} must be in [0, 1), not {getattr(tcfg, key)}")
    if not 0 <= tcfg.val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), not {tcfg.val_fraction}")
    return tcfg


FINE_TUNE_RATE = 0.25  # of the parent's peak rate: a short run nudges the pretrained features, not re-learns them
FINE_TUNE_EMA = 0.99  # a short run's average follows it within about a hundred steps
FROM_PARENT = (
    "preset",
    "batch_size",
    "window_frames",
    "weight_decay",
    "gain_db",
    "response_db",
    "mix_chance",
    "jitter",
)


def fine_tune_settings(parent: Path | str) -> dict:
    """Training settings for a run that starts from ``parent``'s weights (``train --init``): the parent's own
    preset, batch, window and augmentation, a quarter of its rate, a short warm-up and a moving average."""
    saved = json.loads((Path(parent) / CONFIG_FILE).read_text()).get("train", {})
    settings = {k: saved[k] for k in FROM_PARENT if k in saved}
    rate = saved.get("learning_rate", TRAIN_PRESETS[settings.get("preset", "tiny")].learning_rate)
    return {**settings, "learning_rate": rate * FINE_TUNE_RATE, "warmup_steps": 50, "ema_decay": FINE_TUNE_EMA}


# --------------------------------------------------------------------------- how much training fits

BUDGET_MINUTES = 20.0  # a laptop's coffee break: what `run` and `train` train for unless told
# The largest preset that fits this many steps in the budget is chosen; below them a smaller preset trained for
# longer learned the better representation (bench/README.md, "Representation benchmark").
AUTO_MIN_STEPS = {"full": 20_000, "small": 20_000, "tiny": 1_000}
AUTO_MAX_STEPS = 20_000
BUDGET_SHARE = 0.85  # of the budget spent on steps: the rest goes to validation and checkpoints


@dataclass(frozen=True)
class TrainingPlan:
    """A preset and its steps, with the time a step took when measured here."""

    preset: str
    max_steps: int
    seconds_per_step: float
    device: str

    @property
    def minutes(self) -> float:
        return self.max_steps * self.seconds_per_step / BUDGET_SHARE / 60

    def describe(self) -> str:
        return (
            f"preset {self.preset}, {self.max_steps:,} steps: about {_duration(self.minutes * 60)} on this "
            f"{self.device} ({self.seconds_per_step:.3f} s a step, measured)"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _device(accelerator: str) -> str:
    return "cuda" if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu"


def seconds_per_step(name: str, accelerator: str = "auto", give_up_after: float | None = None) -> float:
    """One training step of preset ``name`` timed on random windows (after a warm-up step). With
    ``give_up_after``, a warm-up step slower than three times that is answer enough (inf): the full
    preset on a CPU need not be timed twice to be ruled out."""
    tcfg, device = TRAIN_PRESETS[name], _device(accelerator)
    model = SoundscapeVAE(preset(name)).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(tcfg.batch_size, 1, tcfg.window_frames * SpectrogramConfig.frame_hops, model.cfg.n_mels)
    x = x.to(device).contiguous(memory_format=torch.channels_last)

    def step() -> float:
        t0 = time.perf_counter()
        model.loss(x)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    warm = step()
    if give_up_after is not None and warm > 3 * give_up_after:
        return warm
    return min(step() for _ in range(3))


def plan_training(
    budget_minutes: float = BUDGET_MINUTES,
    *,
    preset_name: str | None = None,
    max_steps: int | None = None,
    accelerator: str = "auto",
    fit_budget: bool = False,
) -> TrainingPlan:
    """What to train: ``preset_name`` for ``max_steps`` (None: the preset's own, or with ``fit_budget`` as many as
    fit), or with no preset named the largest preset that fits :data:`AUTO_MIN_STEPS` in the budget here (else
    tiny), for as many steps as fit (at most :data:`AUTO_MAX_STEPS`)."""
    if not budget_minutes > 0:
        raise ValueError(f"--budget-minutes must be positive, not {budget_minutes}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"--max-steps must be at least 1, not {max_steps}")
    seconds = budget_minutes * 60 * BUDGET_SHARE
    device = _device(accelerator)
    # the full preset is a GPU model (about 7 s a step on 2 cores: bench/README.md); a CPU need not time it
    auto = [p for p in AUTO_MIN_STEPS if device == "cuda" or p != "full"]
    candidates = [preset_name] if preset_name else auto
    for name in candidates:
        if name not in TRAIN_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(TRAIN_PRESETS)}")
        needed = None if preset_name else seconds / AUTO_MIN_STEPS[name]
        per_step = seconds_per_step(name, accelerator, give_up_after=needed)
        if preset_name and fit_budget and max_steps is None:
            return TrainingPlan(name, int(min(AUTO_MAX_STEPS, max(1, seconds // per_step))), per_step, device)
        if preset_name:  # the user's choice: its own steps, whatever the budget (the caller warns)
            return TrainingPlan(name, max_steps or TRAIN_PRESETS[name].max_steps, per_step, device)
        if per_step * AUTO_MIN_STEPS[name] <= seconds or name == candidates[-1]:
            steps = max_steps or int(min(AUTO_MAX_STEPS, max(1, seconds // per_step)))
            return TrainingPlan(name, steps, per_step, device)
    raise AssertionError("unreachable: the last candidate is always taken")


# --------------------------------------------------------------------------- data


@dataclass
class LoadedRecording:
    """A recording's log-mel held in memory (tests, small jobs); training reads :class:`CachedRecording`."""

    relpath: str
    labels: dict[str, str]
    clips: list[torch.Tensor]  # each (hops, mels), whole frames

    @property
    def n_frames(self) -> int:
        return sum(c.shape[0] for c in self.clips) // SpectrogramConfig.frame_hops

    def statistics(self) -> tuple[int, np.ndarray, np.ndarray]:
        """Hops, and per-mel sum and sum of squares."""
        return logmel_sums(self.clips)


def split_by_recording(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of training and validation recordings (at least one of each when n >= 2)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = 0 if n < 2 else min(n - 1, max(1, round(val_fraction * n)))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


class WindowDataset(Dataset):
    """Windows of ``window_frames`` whole frames from clips, at every frame-aligned start.

    A window never crosses a clip's end; a clip shorter than the window gives
    windows of its own length, so every recording of at least one frame is
    trained on (:class:`WindowBatches` puts windows of one length together).
    ``stride`` (frames) spaces the starts; None: the window's length, for validation.
    """

    def __init__(
        self,
        recordings: list[LoadedRecording | CachedRecording],
        window_frames: int,
        frame_hops: int,
        stride: int | None = 1,
        jitter: bool = False,
    ):
        self.jitter = frame_hops if jitter else 0  # a window may start up to half a frame either side
        self.clips = [c for r in recordings for c in r.clips]
        self.index: list[tuple[int, int, int]] = []  # (clip, first hop, hops)
        for i, c in enumerate(self.clips):
            n = c.shape[0] // frame_hops
            w = min(window_frames, n)
            for start in range(0, n - w + 1, stride or w):
                self.index.append((i, start * frame_hops, w * frame_hops))

    @property
    def lengths(self) -> list[int]:
        return [hops for _, _, hops in self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        clip, start, hops = self.index[i]
        if self.jitter:
            room = self.clips[clip].shape[0] - hops
            start = min(room, max(0, start + int(np.random.randint(self.jitter)) - self.jitter // 2))
        return self.clips[clip][start : start + hops].unsqueeze(0)  # (1, hops, mels)


class WindowBatches(torch.utils.data.Sampler):
    """Batches of windows of one length (so they stack), reshuffled every epoch from the seed.

    In a distributed run each of ``replicas`` processes takes every
    ``replicas``-th batch, and all take the same number (a few batches are
    repeated to make it so): a process that ran out first would leave the
    others waiting for it for ever.
    """

    def __init__(
        self, lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0, replicas: int = 1, rank: int = 0
    ):
        self.lengths, self.batch_size, self.shuffle, self.seed = np.asarray(lengths), batch_size, shuffle, seed
        self.replicas, self.rank, self.epoch = replicas, rank, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at each epoch
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for length in np.unique(self.lengths):
            idx = np.flatnonzero(self.lengths == length)
            if self.shuffle:
                idx = rng.permutation(idx)
            chunks = [idx[i : i + self.batch_size].tolist() for i in range(0, len(idx), self.batch_size)]
            if self.shuffle and len(chunks) > 1 and len(chunks[-1]) < self.batch_size:
                chunks.pop()  # a ragged last batch (when training): its windows come in another epoch
            batches += chunks
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.replicas > 1 and batches:
            batches += batches[: (-len(batches)) % self.replicas]
        return batches[self.rank :: self.replicas]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def calibration_windows(
    recordings: list[LoadedRecording | CachedRecording], frame_hops: int, n: int = 32, *, frames: int = 4, seed: int = 0
) -> torch.Tensor:
    """``n`` windows of (up to) ``frames`` frames drawn across ``recordings``: what int8 encoding is calibrated and
    checked on (:mod:`ecovae.precision`). Windows of the longest length there is, so they stack."""
    ds = WindowDataset(recordings, frames, frame_hops, stride=None)
    lengths = np.asarray(ds.lengths)
    pool = np.flatnonzero(lengths == lengths.max())
    pick = np.random.default_rng(seed).permutation(pool)[:n]
    return torch.stack([torch.as_tensor(ds[int(i)]) for i in sorted(pick)])


def input_statistics(recordings: list[LoadedRecording | CachedRecording]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mel-bin mean and standard deviation of the training log-mel."""
    stats = [r.statistics() for r in recordings]
    total = sum(n for n, _, _ in stats)
    mean = sum(s for _, s, _ in stats) / total
    var = sum(s2 for _, _, s2 in stats) / total - mean**2
    std = np.sqrt(np.maximum(var, 1e-6))
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)


# --------------------------------------------------------------------------- augmentation

NATS_PER_DB = math.log(10) / 20  # of the log-mel (log magnitude): a gain of 1 dB adds this


def augment(x: torch.Tensor, tcfg: TrainConfig) -> torch.Tensor:
    """The recipe's augmentations of a batch of log-mel windows (B, 1, T, F), each in the log domain: a gain
    is a shift, a recorder's response a smooth curve over the mel bins, and two soundscapes heard together the
    log of their summed magnitudes (the other 3 to 12 dB below)."""
    b, f = x.shape[0], x.shape[-1]
    shape = (b, 1, 1, 1)
    if tcfg.gain_db:
        x = x + (2 * torch.rand(shape, device=x.device) - 1) * tcfg.gain_db * NATS_PER_DB
    if tcfg.response_db:  # three cosines across the band: a tilt and broad bumps, as recorder models differ
        k = torch.arange(1, 4, device=x.device, dtype=x.dtype)[:, None]
        basis = torch.cos(math.pi * k * torch.linspace(0, 1, f, device=x.device, dtype=x.dtype))  # (3, F)
        curve = torch.randn(b, 3, device=x.device, dtype=x.dtype) @ basis / math.sqrt(3)  # (B, F)
        x = x + curve[:, None, None, :] * tcfg.response_db * NATS_PER_DB
    if tcfg.mix_chance and b > 1:
        other = x[torch.randperm(b, device=x.device)] - (3 + 9 * torch.rand(shape, device=x.device)) * NATS_PER_DB
        mixed = torch.rand(shape, device=x.device) < tcfg.mix_chance
        x = torch.where(mixed, torch.logaddexp(x, other), x)
    return x


def learning_rate_factor(step: int, tcfg: TrainConfig) -> float:
    """The rate's multiplier at ``step``: a linear warm-up over ``warmup_steps``, then a cosine to zero."""
    total, warm = max(1, tcfg.max_steps), min(tcfg.warmup_steps, max(0, tcfg.max_steps - 1))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(step - warm, total - warm) / max(1, total - warm)))


# --------------------------------------------------------------------------- the module


class LitVAE(L.LightningModule):
    def __init__(self, model_config: dict, train_config: dict):
        super().__init__()
        self.save_hyperparameters()
        self.tcfg = TrainConfig(**train_config)
        # channels-last: the convolutions' fast layout on CPUs (and GPUs): a tiny step takes 3/4 of the time
        self.model = SoundscapeVAE(VAEConfig.from_dict(model_config)).to(memory_format=torch.channels_last)

    def beta(self) -> float:
        cfg = self.model.cfg
        if cfg.kl_warmup_steps <= 0:
            return cfg.beta
        return cfg.beta * min(1.0, self.global_step / cfg.kl_warmup_steps)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        batch = augment(batch, self.tcfg)
        out = self.model.loss(batch.contiguous(memory_format=torch.channels_last), beta=self.beta())
        self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, prog_bar=False)
        self.log("loss", out["loss"].detach(), prog_bar=True, logger=False)
        return out["loss"]

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        out = self.model.loss(batch.contiguous(memory_format=torch.channels_last))
        # sync_dist: with several processes, each validates a share; the logged value is their mean
        self.log_dict({f"val/{k}": v for k, v in out.items()}, batch_size=batch.shape[0], sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            [p for p in self.parameters() if p.requires_grad],
            lr=self.tcfg.learning_rate,
            weight_decay=self.tcfg.weight_decay,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: learning_rate_factor(s, self.tcfg))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ExportWeights(L.Callback):
    """Rewrite model.safetensors whenever a checkpoint is saved, so a killed run still has weights: the
    checkpoint's own (with a moving average of the weights, Lightning has put the average there)."""

    def __init__(self, run_dir: Path, history: RunHistory | None = None):
        self.run_dir, self.history = run_dir, history  # with a history: every checkpoint's weights kept

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.is_global_zero:
            state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
            save_state(state, self.run_dir)
            if self.history is not None:  # with the training time to here, for a learning curve
                name = f"step{trainer.global_step:07d}"
                save_state(state, self.run_dir / "weights", f"{name}.safetensors")
                seconds = sum(a["wall_time_s"] for a in self.history.attempts)
                write_json(
                    self.run_dir / "weights" / f"{name}.json",
                    {"step": trainer.global_step, "seconds": seconds, "torch_threads": torch.get_num_threads()},
                )


STOPPED_CHECKPOINT = "stopped.ckpt"


class RunHistory(L.Callback):
    """The held-out score before training and every attempt's steps and time, kept in the
    checkpoints, so a resumed run reports its whole history (a killed attempt wrote no run.json)."""

    def __init__(self, heldout_initial: dict | None):
        self.heldout_initial = heldout_initial
        self.previous: list[dict] = []
        self.current = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from_step": 0, "to_step": 0}
        self.t0 = time.time()

    @property
    def attempts(self) -> list[dict]:
        return [*self.previous, {**self.current, "wall_time_s": round(time.time() - self.t0, 2)}]

    def on_train_start(self, trainer, pl_module) -> None:
        self.current["from_step"] = self.current["to_step"] = int(trainer.global_step)

    def on_train_batch_end(self, trainer, *args) -> None:
        self.current["to_step"] = int(trainer.global_step)

    def state_dict(self) -> dict:
        return {"heldout_initial": self.heldout_initial, "attempts": self.attempts}

    def load_state_dict(self, state: dict) -> None:
        self.heldout_initial = self.heldout_initial or state.get("heldout_initial")
        self.previous = list(state.get("attempts", []))


class LogProgress(L.Callback):
    """Training's progress as lines (steps, loss, ETA) where the output is a log, not a terminal."""

    def __init__(self):
        self.lines: LineProgress | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.lines = LineProgress(trainer.max_steps, "Training", unit="steps", start=int(trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.lines is not None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.lines.update(int(trainer.global_step), loss=f"{float(loss):.1f}")

    def on_train_end(self, trainer, pl_module) -> None:
        if self.lines is not None:
            self.lines.close()


class CheckpointOnStop(L.Callback):
    """On SIGTERM (a scheduler's notice) or Ctrl-C, save where training stopped."""

    def __init__(self, ckpt_dir: Path):
        self.ckpt_dir = ckpt_dir

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException | KeyboardInterrupt):
            trainer.save_checkpoint(self.ckpt_dir / STOPPED_CHECKPOINT)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic in the run folder itself.

    Lightning writes through a temporary file in /tmp and then copies it over
    the checkpoint: a full disk leaves a truncated checkpoint. Here the
    temporary file is beside the checkpoint, flushed to disk, then renamed, so
    a checkpoint is whole or absent.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp, tmp.open("wb") as f:
            torch.save(checkpoint, f)  # through a file object: a full disk is an OSError, not a RuntimeError


class TrainingStopped(Exception):
    """Training was stopped by a signal; a checkpoint was saved to resume from."""


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


@torch.no_grad()
def evaluate(model: SoundscapeVAE, dataset: WindowDataset, batch_size: int = 16, *, seed: int = 0) -> dict[str, float]:
    """Held-out negative ELBO and its parts, per frame (a fixed seed for the posterior samples)."""
    was_training = model.training
    model.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        batches = DataLoader(dataset, batch_sampler=WindowBatches(dataset.lengths, batch_size, shuffle=False))
        return mean_loss(model, batches)[0]
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)


# --------------------------------------------------------------------------- train


@dataclass
class TrainingData:
    """The survey as training sees it: recordings in the log-mel cache, split by recording, as windows."""

    survey: Survey
    recordings: list[CachedRecording]
    window: int  # frames per training window (the setting, or the longest recording if shorter)
    shorter: list[str]  # recordings shorter than the window: trained on windows of their own length
    train: list[CachedRecording]
    val: list[CachedRecording]
    train_ds: WindowDataset
    val_ds: WindowDataset


def training_data(
    recordings: Survey | Path | str,
    *,
    spec: SpectrogramConfig,
    tcfg: TrainConfig,
    labels_csv: Path | str | None = None,
    cache: Path | str | None = None,
    progress: bool = False,
) -> TrainingData:
    """Read the survey into the log-mel cache (once), split it by recording, and cut it into windows."""
    survey = as_survey(recordings, labels_csv, spec)
    data = cache_survey(survey, cache, progress=progress)
    if not data:
        raise RuntimeError(f"{survey.root}: no usable recordings ({len(survey.skipped)} skipped)")
    window = min(tcfg.window_frames, max(r.n_frames for r in data))
    if window < tcfg.window_frames:
        log.warning("recordings are short: training on windows of %d frames instead of %d", window, tcfg.window_frames)
    shorter = [r.relpath for r in data if r.n_frames < window]
    if shorter:
        log.info(
            "%d recordings are shorter than the %d-frame window: trained on windows of their own length",
            len(shorter),
            window,
        )
    train_idx, val_idx = split_by_recording(len(data), tcfg.val_fraction, tcfg.seed)
    train_recs, val_recs = [data[i] for i in train_idx], [data[i] for i in val_idx]
    return TrainingData(
        survey,
        data,
        window,
        shorter,
        train=train_recs,
        val=val_recs,
        train_ds=WindowDataset(train_recs, window, spec.frame_hops, jitter=tcfg.jitter),
        val_ds=WindowDataset(val_recs, window, spec.frame_hops, stride=None),
    )


def _settings(run_dir: Path, tcfg: TrainConfig, mcfg: VAEConfig | None, resume: bool):
    """(training settings, model settings, checkpoint to resume from): a resumed run keeps its saved
    settings except those in RESUMABLE, which come from ``tcfg`` (so --max-steps can extend it)."""
    ckpt_dir = run_dir / "checkpoints"
    if resume:
        saved = json.loads((run_dir / CONFIG_FILE).read_text())
        tcfg = replace(TrainConfig(**saved["train"]), **{k: getattr(tcfg, k) for k in RESUMABLE})
        return tcfg, VAEConfig.from_dict(saved["model"]), newest_readable_checkpoint(ckpt_dir)
    # (later processes of a distributed run start after the first wrote its files)
    if rank_zero_only.rank == 0 and any(ckpt_dir.glob("*.ckpt")):
        raise FileExistsError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
    return tcfg, mcfg or preset(tcfg.preset), None


def _trainer(run_dir: Path, tcfg: TrainConfig, history: RunHistory, has_val: bool, progress: bool) -> L.Trainer:
    ckpt_dir = run_dir / "checkpoints"
    bar = progress and interactive()  # in a log, lines instead of a bar's redraws
    checkpoints = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="step{step}",
            auto_insert_metric_name=False,
            every_n_train_steps=tcfg.checkpoint_every,
            save_last=True,
            save_top_k=1,
        ),
        # on time too: the full preset on a CPU takes over 20 minutes for 100 steps
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="time-step{step}",
            auto_insert_metric_name=False,
            train_time_interval=timedelta(minutes=tcfg.checkpoint_minutes),
            save_top_k=1,
        ),
    ]
    return L.Trainer(
        default_root_dir=run_dir,
        max_steps=tcfg.max_steps,
        max_epochs=-1,
        accelerator=tcfg.accelerator,
        devices=_devices(tcfg.devices),
        num_nodes=tcfg.num_nodes,
        strategy=tcfg.strategy,
        precision=tcfg.precision,
        plugins=[AtomicCheckpointIO()],
        logger=CSVLogger(run_dir, name="logs"),
        # the average first: it puts its weights into the checkpoint that ExportWeights then writes
        callbacks=[*([EMAWeightAveraging(decay=tcfg.ema_decay)] if tcfg.ema_decay else [])]
        + [
            *checkpoints,
            ExportWeights(run_dir, history if tcfg.keep_weights else None),
            history,
            CheckpointOnStop(ckpt_dir),
        ]
        + ([TQDMProgressBar()] if bar else [LogProgress()] if progress else []),
        log_every_n_steps=tcfg.log_every,
        val_check_interval=tcfg.val_every if has_val else None,
        check_val_every_n_epoch=None,
        limit_val_batches=1.0 if has_val else 0,
        num_sanity_val_steps=0,
        enable_progress_bar=bar,
        enable_model_summary=False,
        deterministic=False,
        use_distributed_sampler=False,  # WindowBatches gives each process its share
    )


def _manifest(
    *,
    tcfg: TrainConfig,
    trainer: L.Trainer,
    history: RunHistory,
    data: TrainingData,
    heldout_final: dict | None,
) -> dict:
    attempts = history.attempts
    return {
        "ecovae_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "recordings": str(data.survey.root.resolve()),
        "labels": data.survey.label_source if data.survey.label_source != "the folder layout" else None,
        "seed": tcfg.seed,
        "resampler": " ".join(RESAMPLER.values()),
        "global_step": int(trainer.global_step),
        "attempts": len(attempts),
        "attempt_log": attempts,  # each attempt's start, steps and wall time (to its last checkpoint if killed)
        "wall_time_s": round(sum(a["wall_time_s"] for a in attempts), 2),
        "versions": package_versions(),
        "hardware": hardware_info(),
        "trainer": {
            "accelerator": str(trainer.accelerator.__class__.__name__),
            "devices": trainer.num_devices,
            "num_nodes": trainer.num_nodes,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "precision": str(trainer.precision),
        },
        "data": {
            "files_found": len(data.survey.files),
            "recordings_used": len(data.recordings),
            "hours": round(sum(r.seconds for r in data.recordings) / 3600, 4),
            "skipped": data.survey.skipped,
            "window_frames": data.window,
            "shorter_than_window": data.shorter,  # trained on windows of their own length
            "train_recordings": [r.relpath for r in data.train],
            "val_recordings": [r.relpath for r in data.val],
            "train_windows": len(data.train_ds),
            "val_windows": len(data.val_ds),
        },
        "heldout": {"initial": history.heldout_initial, "final": heldout_final},
    }


def train(
    recordings: Survey | Path | str,
    run_dir: Path | str,
    tcfg: TrainConfig,
    *,
    mcfg: VAEConfig | None = None,
    labels_csv: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
    cache: Path | str | None = None,
    init: Path | str | None = None,
) -> dict | None:
    """Train a VAE on a survey (a :class:`~ecovae.survey.Survey`, or a folder of recordings); returns the run
    manifest.

    With ``init`` (a run folder, such as :func:`ecovae.pretrained.pretrained_dir`), training starts from that
    model's weights, settings and input normalisation instead of random weights (fine-tuning); config.json and
    run.json name it and its weights' digest.

    Their log-mel is computed once into the cache (``cache``, default
    :func:`ecovae.logmel_cache.default_cache_dir`), and windows are read from there.

    With ``resume``, the run's saved settings are used, except those in
    RESUMABLE, which are taken from ``tcfg`` (so --max-steps can extend a run),
    and training continues from the newest readable checkpoint. In a
    distributed run, processes other than the first return None. Stopped by
    SIGTERM or Ctrl-C, it saves a checkpoint and raises :class:`TrainingStopped`.
    """
    quiet_lightning()
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    spec = SpectrogramConfig()  # the run's settings start here; everything after reads them from config.json
    parent = parent_model = None
    if init is not None and not resume:
        parent_model, spec = load_model(init)
        parent, mcfg = {"model": str(init), "weights_digest": weights_digest(init)}, parent_model.cfg
    tcfg, mcfg, resume_from = _settings(run_dir, tcfg, mcfg, resume)
    if resume:
        parent = json.loads((run_dir / CONFIG_FILE).read_text()).get("parent")
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(tcfg.seed, workers=True, verbose=False)
    data = training_data(recordings, spec=spec, tcfg=tcfg, labels_csv=labels_csv, cache=cache, progress=progress)

    module = LitVAE(mcfg.to_dict(), asdict(tcfg))
    heldout_initial = None
    if resume_from is None:
        if parent_model is not None:  # its weights and the normalisation they were trained with
            module.model.load_state_dict(parent_model.state_dict())
        else:
            mean, std = input_statistics(data.train)
            module.model.input_mean.copy_(mean)
            module.model.input_std.copy_(std)
        if rank_zero_only.rank == 0:
            heldout_initial = evaluate(module.model, data.val_ds, seed=tcfg.seed) if len(data.val_ds) else None
            config = {"model": mcfg.to_dict(), "spectrogram": spec.to_dict(), "train": asdict(tcfg)}
            write_json(run_dir / CONFIG_FILE, {**config, "window_frames": data.window, "parent": parent})

    history = RunHistory(heldout_initial)
    trainer = _trainer(run_dir, tcfg, history, has_val=len(data.val_ds) > 0, progress=progress)
    try:
        trainer.fit(
            module, datamodule=WindowData(data.train_ds, data.val_ds, tcfg), ckpt_path=resume_from, weights_only=True
        )
    except (SIGTERMException, KeyboardInterrupt):
        raise TrainingStopped(f"stopped at step {trainer.global_step}; saved {ckpt_dir / STOPPED_CHECKPOINT}") from None

    # The end state: final weights, joined metrics, held-out scores and the manifest.
    trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)  # every process calls it; the first writes
    if not trainer.is_global_zero:
        return None
    (ckpt_dir / STOPPED_CHECKPOINT).unlink(missing_ok=True)  # last.ckpt is newer
    model = module.model.cpu()
    save_weights(model, run_dir)
    save_calibration(run_dir, calibration_windows(data.train, spec.frame_hops, seed=tcfg.seed))
    combine_metrics(run_dir)
    heldout_final = evaluate(model, data.val_ds, seed=tcfg.seed) if len(data.val_ds) else None
    manifest = _manifest(tcfg=tcfg, trainer=trainer, history=history, data=data, heldout_final=heldout_final)
    write_json(run_dir / RUN_FILE, {**manifest, "parent": parent})
    return manifest


def newest_readable_checkpoint(ckpt_dir: Path) -> Path:
    """The newest checkpoint that loads; an unreadable one (a disk that filled up, a copy cut
    short) is passed over with a warning."""
    candidates = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    if not candidates:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint to resume from")
    for path in candidates:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(ckpt, dict) or not {"state_dict", "global_step", "pytorch-lightning_version"} <= set(
                ckpt
            ):
                raise ValueError("not a Lightning checkpoint of a training run")
        except Exception as e:  # any failure to load means: not this one
            log.warning(
                "checkpoint %s is unreadable (%s: %s); trying an older one",
                path,
                type(e).__name__,
                str(e).splitlines()[0][:200] if str(e) else "",
            )
            continue
        if path != candidates[0]:
            log.warning("resuming from %s, the newest readable checkpoint", path.name)
        return path
    raise RuntimeError(f"{ckpt_dir}: none of the {len(candidates)} checkpoints is readable; start a new run")


class WindowData(L.LightningDataModule):
    """Training and validation windows, batched by length; each process takes its own share."""

    def __init__(self, train_ds: WindowDataset, val_ds: WindowDataset, tcfg: TrainConfig):
        super().__init__()
        self.train_ds, self.val_ds, self.tcfg = train_ds, val_ds, tcfg

    def _loader(self, ds: WindowDataset, shuffle: bool) -> DataLoader:
        batches = WindowBatches(
            ds.lengths,
            self.tcfg.batch_size,
            shuffle,
            self.tcfg.seed,
            replicas=self.trainer.world_size,
            rank=self.trainer.global_rank,
        )
        return DataLoader(
            ds,
            batch_sampler=batches,
            num_workers=self.tcfg.num_workers,
            persistent_workers=self.tcfg.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_ds, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_ds, shuffle=False)


def _devices(devices: str):
    return int(devices) if str(devices).isdigit() else devices
