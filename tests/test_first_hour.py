"""The first hour of a new user (issue 21): honest plans, quiet logs, settings that are never silently ignored,
saliency on a sound rather than on noise, and a walk too faint to hear said to be so."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from ecovae.cli import app
from ecovae.progress import LineProgress

from .conftest import write_tone

runner = CliRunner()


def _lab(root: Path, n: int = 4) -> Path:
    for i in range(n):
        write_tone(root / f"site{i % 2}" / f"2024050{1 + i // 2}_0{i}0000.WAV", 4.0, seed=i, freq=1500.0 + 700 * i)
    return root


def test_progress_in_a_log_is_a_line_per_tenth_and_minute_whichever_comes_later(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("ecovae.progress.time.monotonic", lambda: clock[0])
    stream = io.StringIO()
    lines = LineProgress(1000, "Encoding", stream=stream)
    for done in range(1, 1001):
        clock[0] += 0.5  # 2 items a second: 10% takes 50 s, so the minute decides
        lines.update(done, frames=done * 39)
    lines.close()
    out = stream.getvalue().splitlines()
    assert 1 < len(out) <= 10  # 500 s: a line a minute at most, not one per item
    assert out[-1].startswith("Encoding: 1000/1000 files (100%)") and "\r" not in stream.getvalue()
    assert "ETA" in out[0] and "frames" in out[0]

    stream = io.StringIO()
    lines = LineProgress(10, "Training", unit="steps", stream=stream)
    for done in range(1, 11):
        clock[0] += 600  # ten minutes a step: now 10% decides, one line per step
        lines.update(done)
    lines.close()
    assert len(stream.getvalue().splitlines()) == 10


@pytest.mark.slow
def test_train_in_a_log_says_its_plan_and_writes_lines_not_redraws(tmp_path):
    lab = _lab(tmp_path / "lab")
    result = runner.invoke(
        app, ["train", str(lab), "--out", str(tmp_path / "run"), "--preset", "tiny", "--max-steps", "30"]
    )
    assert result.exit_code == 0, result.output
    assert "[plan] preset tiny, 30 steps: about" in result.output and "measured" in result.output
    assert "Training: 30/30 steps (100%)" in result.output
    assert "\r" not in result.output and "\x1b[" not in result.output  # a log, not a terminal: no redraws
    assert result.output.count("Training:") <= 11

    # resumed: the same steps unless told, and a changed setting is refused, naming only options that exist
    again = runner.invoke(app, ["train", str(lab), "--out", str(tmp_path / "run"), "--resume", "--batch-size", "16"])
    assert again.exit_code == 2 and "--batch-size 16 (the run has 8)" in again.output
    assert "--log-every" not in again.output and "Traceback" not in again.output
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = runner.invoke(app, ["train", str(lab), "--out", str(tmp_path / "run"), "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    raw = [f"{w.filename}: {w.message}" for w in caught if "lightning" in w.filename]
    assert raw == []  # Lightning's own notes, with their site-packages paths, say nothing a user can act on
    assert json.loads((tmp_path / "run" / "run.json").read_text())["global_step"] == 30  # not 300, the preset's


@pytest.mark.slow
def test_the_budget_picks_a_preset_that_fits_here():
    from ecovae.train import plan_training

    plan = plan_training(0.5)  # half a minute: no preset but tiny fits its minimum, and tiny fills the budget
    assert plan.preset == "tiny" and plan.max_steps >= 1
    assert plan.max_steps * plan.seconds_per_step <= 0.5 * 60
    assert f"{plan.max_steps:,} steps" in plan.describe()
    named = plan_training(0.5, preset_name="tiny")
    assert named.max_steps == 300  # a named preset trains its own steps; the caller says if over the budget
    with pytest.raises(ValueError, match="budget"):
        plan_training(0)


def test_version():
    from ecovae import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"ecovae {__version__}"


def test_saliency_is_drawn_on_the_stretch_that_holds_a_sound(tmp_path):
    from ecovae.interpret import SALIENCY_FRAMES, saliency_excerpt
    from ecovae.spectrogram import SpectrogramConfig

    spec = SpectrogramConfig()
    sr, rng = 48_000, np.random.default_rng(0)
    steady = tmp_path / "steady.wav"
    sf.write(steady, (0.05 * rng.standard_normal(30 * sr)).astype(np.float32), sr)  # stationary noise
    event = tmp_path / "event.wav"
    x = 0.05 * rng.standard_normal(30 * sr)
    t = np.arange(3 * sr) / sr
    x[20 * sr : 23 * sr] += 0.5 * np.sin(2 * np.pi * (1500 + 400 * np.sin(2 * np.pi * 2 * t)) * t)  # a siren
    sf.write(event, x.astype(np.float32), sr)
    rel, window, where = saliency_excerpt(["steady.wav", "event.wav"], tmp_path, spec)
    assert rel == "event.wav"
    span = SALIENCY_FRAMES * spec.frame_seconds
    assert where["start_s"] <= 20.0 and where["start_s"] + span >= 23.0  # the siren is inside the 8 frames
    assert window.shape == (SALIENCY_FRAMES * spec.frame_hops, spec.n_mels)


def test_saliency_maps_point_at_a_planted_sound(tmp_path):
    """With a score that rises with the planted sound (its direction in latent space), the attribution sits in
    the frames that hold it, not spread over the steady background."""
    from ecovae.interpret import LinearScore, saliency_maps
    from ecovae.model import SoundscapeVAE, preset
    from ecovae.spectrogram import SpectrogramConfig

    spec = SpectrogramConfig()
    torch.manual_seed(0)
    model = SoundscapeVAE(preset("tiny")).eval()
    rng = np.random.default_rng(1)
    frames, hops = 8, spec.frame_hops
    background = torch.as_tensor(rng.normal(-4.0, 0.3, (frames * hops, spec.n_mels)), dtype=torch.float32)
    x = background.clone()
    x[5 * hops : 6 * hops, 20:36] += 4.0  # a loud sound in frame 5, mid bands
    with torch.no_grad():
        mu_event = model.encode(x[None, None])[0][0]
        mu_plain = model.encode(background[None, None])[0][0]
    w = (mu_event[5] - mu_plain[5]).numpy()
    maps = saliency_maps(model, x, LinearScore(w / np.linalg.norm(w), 0.0))
    for name, attribution in maps.items():
        per_frame = np.abs(attribution).reshape(frames, hops, -1).sum((1, 2))
        share = per_frame[5] / per_frame.sum()
        assert share > 2.5 / frames, f"{name}: frame 5 holds {share:.2f} of the attribution (1/8 if spread evenly)"


def test_every_sites_diel_profile_shares_one_scale():
    from ecovae.diel import shared_ylim

    quiet = {"q25": [[0.0, 0.1], [0.0, 0.0], [0.1, 0.1]], "q75": [[0.2, 0.3], [0.1, 0.1], [0.2, 0.2]]}
    loud = {"q25": [[-3.0, -2.0], [0.0, 0.0], [0.0, 0.0]], "q75": [[4.0, 5.0], [0.5, 0.5], [0.5, 0.5]]}
    lo, hi = shared_ylim([quiet, loud])
    assert lo < -3.0 and hi > 5.0  # the loud site's range, for the quiet one too: sites compare by eye
    assert shared_ylim([]) is None
