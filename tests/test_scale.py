"""Scale: memory that does not grow with a recording's length."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.slow  # seconds to a minute each: CI runs them; `-m 'not slow'` skips

CHILD = """
import json, resource, sys
from ecovae.encode import encode

s = encode(sys.argv[1], sys.argv[2], sys.argv[3], progress=False, workers=int(sys.argv[4]))
peak = max(resource.getrusage(r).ru_maxrss for r in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(json.dumps({"frames": s.frames, "skipped": len(s.skipped), "max_rss_kb": peak}))
"""


def write_long_recording(path: Path, seconds: float, rate: int = 16_000) -> Path:
    """A synthetic soundscape (noise floor, chirping tones), written block by block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        for start in range(0, int(seconds), 60):
            t = np.arange(int(min(60, seconds - start) * rate)) / rate
            tone = 0.2 * np.sin(2 * np.pi * (1500 + 500 * np.sin(2 * np.pi * (start + t) / 7)) * t)
            f.write((tone + 0.02 * rng.standard_normal(len(t))).astype(np.float32))
    return path


def peak_encoding(folder: Path, run: Path, out: Path, workers: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(run), str(out), str(workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("workers", [0, 1])  # decoding in the model's process, or in a worker beside it
def test_peak_memory_does_not_grow_with_recording_length(untrained_run, tmp_path, workers):
    short = peak_encoding(
        write_long_recording(tmp_path / "short" / "a.wav", 600).parent,
        untrained_run,
        tmp_path / "short.parquet",
        workers,
    )
    long = peak_encoding(
        write_long_recording(tmp_path / "long" / "a.wav", 7200).parent,
        untrained_run,
        tmp_path / "long.parquet",
        workers,
    )
    assert (short["skipped"], long["skipped"]) == (0, 0)
    assert long["frames"] > 11 * short["frames"]
    ratio = long["max_rss_kb"] / short["max_rss_kb"]
    print(f"peak RSS 10 min {short['max_rss_kb'] / 1024:.0f} MB, 2 h {long['max_rss_kb'] / 1024:.0f} MB ({ratio:.3f}x)")
    assert ratio <= 1.10
