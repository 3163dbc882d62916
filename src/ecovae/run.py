"""The run folder: what a trained model is on disk, written and read without running any code.

A run folder holds ``config.json`` (model, spectrogram and training settings),
``model.safetensors`` (the weights), ``calibration.safetensors`` (log-mel windows
from the training recordings: what int8 encoding is calibrated and checked on), ``run.json`` (the manifest: versions,
data, seed, hardware, wall time, held-out scores), ``metrics.csv``, and, while
training, ``checkpoints/`` and ``logs/``. Training writes it
(:mod:`ecovae.train`); encoding, interpretation and the CLI only read it, through
:func:`load_model`, so none of them needs the training code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ecovae.files import atomic_file
from ecovae.model import SoundscapeVAE, VAEConfig
from ecovae.spectrogram import SpectrogramConfig

CONFIG_FILE, WEIGHTS_FILE, RUN_FILE, METRICS_FILE = "config.json", "model.safetensors", "run.json", "metrics.csv"
CALIBRATION_FILE = "calibration.safetensors"


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        except SafetensorError as e:  # a full or read-only disk: say so as the OS does
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def save_weights(model: SoundscapeVAE, run_dir: Path) -> None:
    save_state(model.state_dict(), run_dir)


def save_state(state: dict[str, torch.Tensor], run_dir: Path, name: str = WEIGHTS_FILE) -> None:
    """A model's state dict as the run's weights (or as ``name`` in ``run_dir``)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    _save_tensors(state, Path(run_dir) / name)


def save_calibration(run_dir: Path, windows: torch.Tensor) -> None:
    """Log-mel windows (N, 1, T, mels) from the training recordings, kept with the model."""
    _save_tensors({"logmel": windows.float()}, Path(run_dir) / CALIBRATION_FILE)


def load_calibration(run_dir: Path | str) -> torch.Tensor | None:
    """The run's calibration windows (N, 1, T, mels), or None for a run trained without them."""
    from safetensors.torch import load_file

    path = Path(run_dir) / CALIBRATION_FILE
    return load_file(str(path))["logmel"] if path.is_file() else None


def write_json(path: Path, obj: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def init_run(run_dir: Path | str, mcfg: VAEConfig, seed: int = 0) -> Path:
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
    config = {"model": mcfg.to_dict(), "spectrogram": spec.to_dict()}
    write_json(run_dir / CONFIG_FILE, config)
    return run_dir


def load_model(run_dir: Path | str, map_location: str = "cpu") -> tuple[SoundscapeVAE, SpectrogramConfig]:
    """The trained model of a run folder, from JSON and safetensors only (no pickle).

    A missing, truncated or mismatched file is a ValueError/FileNotFoundError naming it.

    >>> from ecovae import pretrained_dir
    >>> model, spec = load_model(pretrained_dir())
    >>> model.training, spec.frame_seconds, spec.sample_rate
    (False, 1.536, 48000)
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / CONFIG_FILE, run_dir / WEIGHTS_FILE
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing; is {run_dir} a run folder made by 'ecovae train'?")
    try:
        cfg = json.loads(cfg_path.read_text())
        with torch.device("meta"):  # no random initialisation: the weights are loaded next
            model = SoundscapeVAE(VAEConfig.from_dict(cfg["model"]))
        spec = SpectrogramConfig(**cfg["spectrogram"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{cfg_path}: not a valid ecovae config ({type(e).__name__}: {e})") from None
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights}: unreadable ({e}); the file may be truncated: copy it again or re-train") from None
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ValueError(
            f"{weights} does not match {cfg_path} ({first}); were they copied from different runs?"
        ) from None
    return model.eval(), spec


@dataclass(frozen=True)
class RunFolder:
    """A run folder as the later stages read it: its settings, manifest, weights' digest and the recordings it
    was trained on. Nothing here runs code: JSON and safetensors only.

    >>> from ecovae import pretrained_dir
    >>> shipped = RunFolder(pretrained_dir())
    >>> shipped.digest == weights_digest(pretrained_dir()), shipped.config["model"]["frame_hops"]
    (True, 192)
    """

    path: Path

    @property
    def config(self) -> dict:
        return json.loads((self.path / CONFIG_FILE).read_text())

    @property
    def manifest(self) -> dict:
        """run.json, or {} for a folder made without training (``ecovae.run.init_run``)."""
        run = self.path / RUN_FILE
        return json.loads(run.read_text()) if run.is_file() else {}

    @property
    def digest(self) -> str:
        return weights_digest(self.path)

    def recordings(self) -> Path:
        """The folder the model was trained on; FileNotFoundError that says what to pass if it is not there now."""
        folder = self.manifest.get("recordings")
        if not folder or not Path(folder).is_dir():
            where = f" ({folder} is not there now)" if folder else ""
            raise FileNotFoundError(f"cannot find the recordings of {self.path}{where}; pass --recordings")
        return Path(folder)

    def load(self, map_location: str = "cpu") -> tuple[SoundscapeVAE, SpectrogramConfig]:
        return load_model(self.path, map_location)


def weights_digest(run_dir: Path) -> str:
    """A short SHA-256 of the weights: what encoded a latents file (its identity)."""
    path = (Path(run_dir) / WEIGHTS_FILE).resolve()
    st = path.stat()
    return _digest(path, st.st_size, st.st_mtime_ns)


def state_digest(model: torch.nn.Module) -> str:
    """A short SHA-256 of a model's weights as they are in memory (:func:`weights_digest` reads the file): which
    model a cached result came from."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@lru_cache(maxsize=16)
def _digest(path: Path, size: int, mtime_ns: int) -> str:  # once per file version and process (full: 60 MB)
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
