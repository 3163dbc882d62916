"""The benchmark scripts run end to end in smoke mode (seconds of audio), so they cannot rot."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
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
        "novelty.py",
        pytest.param(
            "explore.py",
            marks=pytest.mark.skipif(
                not (shutil.which("chromium") and shutil.which("chromedriver")),
                reason="Debian's chromium and chromium-driver are not installed (scripts/test.sh installs them as root)",
            ),
        ),
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
        modes = {r["mode"]: r for r in result["modes"]}
        assert set(modes) == {"fp32", "bf16", "int8"} and modes["fp32"]["mu_cosine_min"] == pytest.approx(1.0)
        for r in modes.values():  # each mode measured, or the reason it was not
            assert "error" in r or (r["end_to_end_rtf"] > 0 and r["overhead_ratio"] > 0 and r["encoder_rtf"] > 0)
        assert result["peak_gflop_per_s"]["fp32"] > 0 and modes["fp32"]["fraction_of_peak"] > 0
    elif script == "train_throughput.py":  # each precision x layout; the held-out curve of each precision
        assert {(r["precision"], r["layout"]) for r in result["rows"]} == {
            (p, m) for p in ("32-true", "bf16-mixed") for m in ("channels_last", "contiguous")
        }
        assert all(r["frames_per_s"] > 0 for r in result["rows"])
        assert [c["precision"] for c in result["curves"]] == ["32-true", "bf16-mixed"]
        assert all(c["heldout_final"] > 0 for c in result["curves"])
    elif script == "explore.py":  # the page drew every frame; the baseline and the excerpt were measured
        (row,) = result["rows"]
        assert row["frames"] == 2000 and row["first_paint_s"] > 0 and row["pandas_read_s"] > 0
        assert row["excerpt_median_ms"] > 0 and row["server_peak_mb"] > 0
    elif script == "resume_index.py":  # only the one file not yet done was opened (and found empty)
        assert [(r["already_done"], r["skipped_now"]) for r in result["rows"]] == [(999, 1), (1999, 1)]
    elif script == "representation.py":  # every feature set x descriptor x classifier, for each task
        tasks = {r["task"] for r in result["table"]}
        assert tasks == {"sim: site per site-day", "sim: habitat per site-day"}
        assert len(result["table"]) == 2 * 2 * 3 * 2 and all(0 <= r["mean"] <= 1 for r in result["table"])
        assert out.with_suffix(".md").read_text().count("| vae |") == 2 * 3
        if importlib.util.find_spec("onnxruntime"):  # int8 against fp32, per task
            assert {(r["task"], r["precision"]) for r in result["precision_fidelity"]} == {(t, "int8") for t in tasks}
            assert all(r["max_abs_diff"] >= 0 for r in result["precision_fidelity"])
    elif script == "train_memory.py":  # both ways of reading, each size, every figure there
        assert {(r["mode"], r["hours"]) for r in result["rows"]} == {
            (m, h) for m in ("in memory", "streamed") for h in (0.1, 0.2)
        }
        assert all(r["peak_rss_mb"] > 0 and r["steps_per_s"] > 0 for r in result["rows"])
    elif script == "novelty.py":  # every planted event ranked, with and without the clip, on the same frames
        assert {(r["score"], r["kind"]) for r in result["rows"]} == {
            (s, k) for s in ("clipped", "not clipped (baseline)") for k in ("chainsaw", "siren")
        }
        ranks = {(e["score"], e["path"]): e["best_rank"] for e in result["events"]}
        assert len(ranks) == 4 and all(1 <= r <= result["events"][0]["frames"] for r in ranks.values())
    elif script == "encode_engines.py":
        assert [r["files"] for r in result["rows"]] == [4, 4] and result["rows_equal"]
        assert result["max_mu_difference"] < 1e-4
    else:
        assert [r["frames"] for r in result["rows"]] == [9, 39]


def test_pretraining_script_trains_and_ships_a_model_card(shared_data, tmp_path):
    """bench/pretrain.py --smoke: the corpus (real recordings less the GPL one, two worlds), a tiny model trained 4
    steps with the recipe, its weights kept at each checkpoint, and shipped with a card that loads."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "pretrain.py"), "--smoke", "--recipe", "ema_aug", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCH,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    kept = sorted(p.name for p in (tmp_path / "run_ema_aug_tiny_seed0" / "weights").glob("*.safetensors"))
    assert kept == ["step0000002.safetensors", "step0000004.safetensors"]
    from ecovae.run import load_model, weights_digest

    shipped = tmp_path / "shipped"
    load_model(shipped)
    card = json.loads((shipped / "MODEL_CARD.json").read_text())
    assert card["weights_digest"] == weights_digest(shipped) and card["steps"] == 4
    assert any(x["path"] == "tropicalsound.wav" for x in card["corpus"]["left_out"])  # the GPL-3.0 file
    assert card["corpus"]["simulated"]["settings"]["worlds"] == 2
    assert "| data/maad_jura_diel | 96 | 16.0 | BSD-3-Clause |" in (shipped / "MODEL_CARD.md").read_text()


def test_gpu_script_runs_its_steps_on_the_cpu(shared_data, tmp_path):
    """bench/gpu.sh, for a lent GPU machine, takes the same path on the CPU (smoke sizes)."""
    env = {**os.environ, "DEVICE": "cpu", "SMOKE": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(BENCH / "gpu.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    encode = json.loads((tmp_path / "encode_throughput_cpu.json").read_text())
    assert [m["mode"] for m in encode["modes"]] == ["fp32", "bf16"]
    for p in ("32-true", "bf16-mixed"):
        train = json.loads((tmp_path / f"train_throughput_cpu_{p}.json").read_text())
        assert {r["precision"] for r in train["rows"]} == {p} and train["curves"] == []
