"""The benchmark scripts run end to end in smoke mode (seconds of audio), so they cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # seconds to a minute each: CI runs them; `-m 'not slow'` skips

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize(
    "script",
    [
        "encode_throughput.py",
        "train_throughput.py",
        "peak_memory.py",
        "encode_engines.py",
        "resume_index.py",
        "representation.py",
        "train_memory.py",
    ],
)
def test_benchmark_smoke(script, shared_data, tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCH,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] and result["hardware"]["cpu_count"] >= 1
    if script == "encode_throughput.py":
        e2e = result["end_to_end"][0]
        assert e2e["frames"] == 19 and e2e["end_to_end_rtf"] > 0 and e2e["overhead_ratio"] > 0
        assert all("cosine_mu_vs_fp32" in v or "error" in v for v in result["variants"])
    elif script == "train_throughput.py":
        assert result["rows"][0]["frames_per_s"] > 0
    elif script == "resume_index.py":  # only the one file not yet done was opened (and found empty)
        assert [(r["already_done"], r["skipped_now"]) for r in result["rows"]] == [(999, 1), (1999, 1)]
    elif script == "representation.py":  # every feature set x descriptor x classifier, for each task
        tasks = {r["task"] for r in result["table"]}
        assert tasks == {"sim: site per site-day", "sim: habitat per site-day"}
        assert len(result["table"]) == 2 * 2 * 3 * 2 and all(0 <= r["mean"] <= 1 for r in result["table"])
        assert out.with_suffix(".md").read_text().count("| vae |") == 2 * 3
    elif script == "train_memory.py":  # both ways of reading, each size, every figure there
        assert {(r["mode"], r["hours"]) for r in result["rows"]} == {
            (m, h) for m in ("in memory", "streamed") for h in (0.1, 0.2)
        }
        assert all(r["peak_rss_mb"] > 0 and r["steps_per_s"] > 0 for r in result["rows"])
    elif script == "encode_engines.py":
        assert [r["files"] for r in result["rows"]] == [4, 4] and result["rows_equal"]
        assert result["max_mu_difference"] < 1e-4
    else:
        assert [r["frames"] for r in result["rows"]] == [9, 39]
