"""Training under attack: a full disk, a corrupt checkpoint, SIGTERM, a kill before the first step
checkpoint, short recordings, and a history that survives resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ecovae.run import load_model
from ecovae.train import (
    LoadedRecording,
    WindowBatches,
    WindowDataset,
    train,
    train_preset,
)

from .conftest import fill, write_tone

pytestmark = pytest.mark.slow  # real training runs in subprocesses


def _survey(root: Path, seconds=(20.0, 20.0, 20.0, 20.0)) -> Path:
    for i, s in enumerate(seconds):
        write_tone(root / f"site{i % 2}" / f"20240501_{i:02d}0000.WAV", s, freq=400 + 500 * i, seed=i)
    return root


def _cmd(data: Path, run: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ecovae", "train", str(data), "--out", str(run), "--preset", "tiny", "--quiet", *args]


def _wait_for(path_glob, proc: subprocess.Popen, seconds: float = 240) -> Path:
    deadline = time.time() + seconds
    while True:
        found = path_glob()
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"training ended first: {proc.stderr.read()[-2000:]}")
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def _step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def test_a_full_disk_leaves_the_last_checkpoint_whole_and_the_run_resumable(tmp_path, small_disk):
    data = _survey(tmp_path / "data")
    disk = small_disk(8192)
    run = disk / "run"
    cmd = _cmd(data, run, "--max-steps", "80", "--checkpoint-every", "20", "--val-every", "1000")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: sorted((run / "checkpoints").glob("last.ckpt")), proc)  # written after step20.ckpt
    filler = fill(disk)  # the disk fills up while training goes on: the next checkpoint cannot be written
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, out + err
    assert "No space left on device" in err and "Traceback" not in err
    last = run / "checkpoints" / "last.ckpt"
    assert _step(last) == 20  # whole: the failed write did not touch it
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]  # no debris on the full disk
    load_model(run)  # the exported weights are whole too

    filler.unlink()
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "run.json").read_text())["global_step"] == 80


def test_resume_falls_back_to_the_newest_readable_checkpoint(tmp_path):
    data = _survey(tmp_path / "data")
    run = tmp_path / "run"
    train(data, run, train_preset("tiny", max_steps=20, checkpoint_every=10, val_every=10), progress=False)
    ckpts = run / "checkpoints"
    good = ckpts / "step20.ckpt"
    assert _step(good) == 20
    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # cut short, as a full disk once left it
    os.utime(last)  # and the newest
    with pytest.raises(FileExistsError, match="--resume"):
        train(data, run, train_preset("tiny", max_steps=30), progress=False)
    done = subprocess.run(_cmd(data, run, "--max-steps", "30", "--resume"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "last.ckpt is unreadable" in done.stderr and "step20.ckpt" in done.stderr
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["global_step"] == 30 and manifest["attempt_log"][-1]["from_step"] == 20


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_keeps_its_whole_history(tmp_path):
    data = _survey(tmp_path / "data")
    run = tmp_path / "run"
    cmd = _cmd(data, run, "--max-steps", "100000", "--checkpoint-every", "5", "--val-every", "100000")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: sorted((run / "checkpoints").glob("step5.ckpt")), proc)
    time.sleep(1.5)  # a few steps past the step checkpoint
    proc.send_signal(signal.SIGTERM)  # a scheduler's notice
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err
    assert "--resume" in err and "Traceback" not in err
    stopped = run / "checkpoints" / "stopped.ckpt"
    stopped_at = _step(stopped)
    assert stopped_at > 5  # saved where it stopped, not at the last step checkpoint
    assert not (run / "run.json").exists()

    resumed_to = stopped_at + 10
    done = subprocess.run(
        _cmd(data, run, "--max-steps", str(resumed_to), "--resume"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["global_step"] == resumed_to and manifest["attempts"] == 2
    first, second = manifest["attempt_log"]
    assert (first["from_step"], first["to_step"]) == (0, stopped_at)
    assert (second["from_step"], second["to_step"]) == (stopped_at, resumed_to)
    # the first attempt's held-out score and time are kept, not lost with it
    assert manifest["heldout"]["initial"] is not None and manifest["heldout"]["final"] is not None
    assert manifest["wall_time_s"] == pytest.approx(first["wall_time_s"] + second["wall_time_s"], abs=0.02)
    assert first["wall_time_s"] > 1.0
    assert not stopped.exists()  # finished: last.ckpt is the one to go on from


def test_a_kill_before_the_first_step_checkpoint_keeps_the_timed_one(tmp_path):
    data = _survey(tmp_path / "data")
    run = tmp_path / "run"
    cmd = _cmd(
        data,
        run,
        "--max-steps",
        "100000",
        "--checkpoint-every",
        "100000",
        "--val-every",
        "100000",
        "--checkpoint-minutes",
        "0.01",
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timed = _wait_for(lambda: sorted((run / "checkpoints").glob("time-step*.ckpt")), proc)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    steps = _step(sorted((run / "checkpoints").glob("time-step*.ckpt"))[-1])
    assert steps > 0 and timed.name.startswith("time-step")
    done = subprocess.run(
        _cmd(data, run, "--max-steps", str(steps + 5), "--checkpoint-every", "100000", "--resume"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["attempt_log"][-1]["from_step"] == steps


def test_every_recording_of_a_frame_or_more_is_trained_on(tmp_path):
    # 4 s = 2 frames, 10 s = 6, 20 s = 13: with a 10-frame window the old code dropped the first two kinds
    data = _survey(tmp_path / "data", (4.0, 4.0, 10.0, 10.0, 20.0, 20.0, 20.0, 20.0))
    write_tone(data / "site0" / "20240502_000000.WAV", 1.0)  # under one frame: skipped, with the reason
    manifest = train(
        data,
        tmp_path / "run",
        train_preset("tiny", max_steps=6, window_frames=10, val_every=3, checkpoint_every=3),
        progress=False,
    )
    d = manifest["data"]
    assert d["recordings_used"] == 8 and list(d["skipped"]) == ["site0/20240502_000000.WAV"]
    assert "shorter than one frame" in d["skipped"]["site0/20240502_000000.WAV"]
    assert len(d["train_recordings"]) + len(d["val_recordings"]) == 8
    assert sorted(d["shorter_than_window"]) == sorted(f"site{i % 2}/20240501_{i:02d}0000.WAV" for i in range(4))
    assert manifest["global_step"] == 6


def test_window_batches_have_one_length_and_share_an_epoch_between_processes():
    clips = [torch.zeros(192 * n, 4) for n in (2, 6, 13, 13, 40 - 1)]
    ds = WindowDataset([LoadedRecording("a", {}, clips)], window_frames=10, frame_hops=192)
    assert sorted(set(ds.lengths)) == [2 * 192, 6 * 192, 10 * 192]
    for batch in WindowBatches(ds.lengths, 4, shuffle=True, seed=0):
        assert len({ds.lengths[i] for i in batch}) == 1
        torch.stack([ds[i] for i in batch])  # stacks: one length
    seen = [sorted(i for b in WindowBatches(ds.lengths, 4, True, 0, replicas=3, rank=r) for i in b) for r in range(3)]
    counts = [len(list(WindowBatches(ds.lengths, 4, True, 0, replicas=3, rank=r))) for r in range(3)]
    assert len(set(counts)) == 1  # every process the same number of batches: none waits for ever
    covered = set().union(*map(set, seen))
    full = {i for b in WindowBatches(ds.lengths, 4, True, 0) for i in b}
    assert covered == full
    a = list(WindowBatches(ds.lengths, 4, True, seed=0))
    b = WindowBatches(ds.lengths, 4, True, seed=0)
    b.set_epoch(1)
    assert a != list(b)  # reshuffled each epoch
    assert np.isclose(len(full), len(ds), rtol=0.3)
