"""Training on several processes: Lightning DDP on CPU (gloo), through the same 'ecovae train' command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ecovae.model import preset
from ecovae.run import load_model

from .conftest import write_tone

pytestmark = pytest.mark.slow  # seconds to a minute each: CI runs them; `-m 'not slow'` skips


def _train(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "ecovae", "train", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_two_process_ddp_run_writes_one_checkpoint_and_resumes(tmp_path):
    root = tmp_path / "survey"
    for i in range(8):
        write_tone(root / f"site{i % 2}" / f"20240501_{i:02d}0000.WAV", 12.0, freq=300 + 400 * i, seed=i)
    run = tmp_path / "run"
    ddp = [
        "--preset",
        "tiny",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--quiet",
        "--checkpoint-every",
        "6",
        "--val-every",
        "6",
    ]
    first = _train(str(root), "--out", str(run), "--max-steps", "12", *ddp)

    manifest = json.loads((run / "run.json").read_text())
    assert manifest["trainer"]["world_size"] == 2 and manifest["trainer"]["strategy"] == "DDPStrategy"
    assert manifest["global_step"] == 12
    assert first.stdout.count("trained 12 steps") == 1  # only the first process reports
    # One checkpoint (and 'last'), written once: not one per process.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step12.ckpt"]
    held = manifest["heldout"]
    assert held["final"]["neg_elbo"] < held["initial"]["neg_elbo"]  # the processes trained one model together

    _train(str(root), "--out", str(run), "--resume", "--max-steps", "18", *ddp)
    resumed = json.loads((run / "run.json").read_text())
    assert (resumed["global_step"], resumed["attempts"]) == (18, 2)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step18.ckpt"]
    model, _ = load_model(run)  # the exported weights load as a plain model
    assert model.cfg.to_dict() == preset("tiny").to_dict()
