"""Encoding on a local Ray cluster: the same rows as one machine, and surviving a killed worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ecovae.encode import encode

from .conftest import write_tone

pytestmark = pytest.mark.slow  # seconds to a minute each: CI runs them; `-m 'not slow'` skips


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["path", "frame_in_recording"]).reset_index(drop=True)


def test_ray_encoding_equals_local_row_for_row(shared_data, untrained_run, tmp_path):
    import ray

    manifest = shared_data / "MANIFEST.csv"
    local = encode(shared_data, untrained_run, tmp_path / "local.parquet", labels_csv=manifest, progress=False)
    ray.init(num_cpus=2, include_dashboard=False)  # a local cluster of 2 CPU workers
    try:
        on_ray = encode(shared_data, untrained_run, tmp_path / "ray", labels_csv=manifest, engine="ray", progress=False)
    finally:
        ray.shutdown()
    assert (on_ray.encoded, on_ray.frames, on_ray.skipped) == (
        local.encoded,
        local.frames,
        local.skipped,
    )
    assert on_ray.encoded > 100
    assert len(list((tmp_path / "ray").glob("part-*.parquet"))) > 2  # several tasks, each its own part
    a = _sorted(pd.read_parquet(tmp_path / "local.parquet"))
    b = _sorted(pd.read_parquet(tmp_path / "ray"))
    assert not b.duplicated(["path", "frame_in_recording"]).any()
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-5, rtol=1e-4)


def _encoding_workers() -> list[int]:
    """PIDs of Ray workers running an encoding task now (Ray titles them after the task)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::encode_chunk"):
            pids.append(int(pid))
    return pids


def test_killed_ray_worker_is_redone_once_and_nothing_is_duplicated(untrained_run, tmp_path):
    root = tmp_path / "survey"
    for i in range(16):
        write_tone(root / f"site{i % 2}" / f"20240501_{i:02d}0000.WAV", 70.0, freq=400 + 150 * i, seed=i)
    (root / "site0" / "20240502_000000.WAV").write_bytes(b"RIFF" + os.urandom(2000))  # one corrupt file
    reference = tmp_path / "local.parquet"
    encode(root, untrained_run, reference, progress=False)

    out = tmp_path / "ray"
    cmd = [
        sys.executable,
        "-m",
        "ecovae",
        "encode",
        str(root),
        "--model",
        str(untrained_run),
        "--out",
        str(out),
        "--engine",
        "ray",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.time() + 240
    while killed is None and proc.poll() is None and time.time() < deadline:
        running = _encoding_workers()
        if running:
            killed = running[0]
            os.kill(killed, signal.SIGKILL)  # a worker dies mid-task
        time.sleep(0.01)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert killed is not None, "no encoding worker was seen running"

    summary = json.loads((tmp_path / "ray.summary.json").read_text())
    assert summary["encoded"] == 16 and list(summary["skipped"]) == ["site0/20240502_000000.WAV"]
    a, b = _sorted(pd.read_parquet(reference)), _sorted(pd.read_parquet(out))
    assert not b.duplicated(["path", "frame_in_recording"]).any()
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-5, rtol=1e-4)
