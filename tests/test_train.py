"""Training on real recordings: it learns, its run folder is complete, and a killed run resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from ecovae.run import load_model
from ecovae.train import (
    LoadedRecording,
    WindowDataset,
    split_by_recording,
    train,
    train_preset,
)


def test_split_is_by_recording_and_seeded():
    a_train, a_val = split_by_recording(20, 0.2, seed=1)
    assert set(a_train).isdisjoint(a_val) and sorted(a_train + a_val) == list(range(20)) and len(a_val) == 4
    assert split_by_recording(20, 0.2, seed=1) == (a_train, a_val)
    assert split_by_recording(20, 0.2, seed=2) != (a_train, a_val)
    assert split_by_recording(1, 0.2, seed=0) == ([0], [])


def test_windows_stay_inside_one_clip():
    recs = [
        LoadedRecording("a", {}, [torch.full((192 * 3, 64), 1.0)]),
        LoadedRecording("b", {}, [torch.full((192 * 2, 64), 2.0)]),
    ]
    ds = WindowDataset(recs, window_frames=2, frame_hops=192)
    assert len(ds) == 2 + 1
    assert all(x.shape == (1, 384, 64) and x.unique().numel() == 1 for x in ds)


def test_tiny_model_lowers_heldout_negative_elbo_on_real_data(shared_run):
    _, manifest = shared_run
    initial, final = manifest["heldout"]["initial"], manifest["heldout"]["final"]
    assert final["neg_elbo"] < 0.5 * initial["neg_elbo"]
    assert final["mse"] < 0.5 * initial["mse"]
    assert manifest["global_step"] == 300


def test_run_folder_is_complete_and_loads_without_pickle(shared_run, manifest):
    run, _ = shared_run
    assert {p.name for p in run.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "metrics.csv",
        "run.json",
        "checkpoints",
    }
    saved = json.loads((run / "run.json").read_text())
    assert saved["seed"] == 0 and saved["versions"]["torch"].startswith("2.13")
    assert saved["hardware"]["cpu_count"] >= 1 and saved["wall_time_s"] > 0
    assert saved["trainer"]["precision"] == "32-true"
    data = saved["data"]
    assert data["recordings_used"] == len(manifest) and data["skipped"] == {}
    assert set(data["train_recordings"]).isdisjoint(data["val_recordings"])
    assert len(data["train_recordings"]) + len(data["val_recordings"]) == len(manifest)

    metrics = pd.read_csv(run / "metrics.csv")
    assert {"train/recon_nll", "train/kl", "val/neg_elbo", "val/mse", "val/mae"} <= set(metrics.columns)
    val = metrics.dropna(subset=["val/neg_elbo"])
    assert len(val) >= 2 and val["val/neg_elbo"].iloc[-1] < val["val/neg_elbo"].iloc[0]

    model, spec = load_model(run)
    assert spec.n_mels == 64 and model.cfg.latent_dim == 16
    assert model.input_std.min() > 0 and not torch.equal(model.input_mean, torch.zeros(64))


@pytest.mark.slow
def test_killed_training_resumes_where_it_stopped(shared_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shared_data / "behaviour_soundscapes", data)
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "ecovae",
        "train",
        str(data),
        "--out",
        str(run),
        "--preset",
        "tiny",
        "--max-steps",
        "60",
        "--checkpoint-every",
        "10",
        "--val-every",
        "30",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (run / "checkpoints" / "step30.ckpt").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "run.json").exists()

    with pytest.raises(FileExistsError, match="--resume"):
        train(data, run, train_preset("tiny"), progress=False)
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["global_step"] == 60

    metrics = pd.read_csv(run / "metrics.csv")
    train_rows = metrics.dropna(subset=["train/loss"])
    steps = train_rows["step"].tolist()
    assert steps == sorted(set(steps)) and steps[0] < 30 and steps[-1] >= 50
    first = train_rows["train/loss"].iloc[0]
    after = train_rows[train_rows["step"] > 30]["train/loss"].iloc[0]
    assert after < 0.8 * first  # continues from the checkpoint, not from scratch
