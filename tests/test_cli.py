"""The command line as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ecovae.cli import app
from tests.conftest import chromium

runner = CliRunner()


def test_help_does_not_import_torch_or_lightning():
    code = "import sys; import ecovae.cli; print('torch' in sys.modules, 'lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    help_out = subprocess.run([sys.executable, "-m", "ecovae", "--help"], capture_output=True, text=True)
    assert help_out.returncode == 0
    for command in ("quickstart", "simulate", "train", "encode", "model-summary"):
        assert command in help_out.stdout


def test_model_summary_prints_the_table():
    result = runner.invoke(app, ["model-summary", "--preset", "full"])
    assert result.exit_code == 0, result.output
    assert "512 x 6 x 4" in result.output and "1 x 192 x 64" in result.output
    params = [line for line in result.output.splitlines() if line.startswith("parameters:")][0]
    assert int(params.split()[1].replace(",", "")) > 10_000_000


def test_errors_name_the_problem(tmp_path):
    result = runner.invoke(
        app, ["encode", str(tmp_path), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x.parquet")]
    )
    assert result.exit_code == 2 and "config.json" in result.output
    result = runner.invoke(app, ["model-summary", "--preset", "huge"])
    assert result.exit_code == 2 and "unknown preset" in result.output


@pytest.mark.slow
def test_quickstart_end_to_end(quickstart):
    out, result = quickstart
    assert result.exit_code == 0, result.output
    labels = pd.read_csv(out / "survey" / "labels.csv")
    df = pd.read_parquet(out / "latents.parquet")
    assert set(df["path"]) == set(labels["path"])
    assert len(df) == len(labels) * 3  # 6 s recordings: 3 whole frames of 1.536 s each
    evaluation = json.loads((out / "eval" / "evaluation.json").read_text())
    # units: one per site, recorder and day, each holding that day's recordings
    assert evaluation["unit"] == "site,recorder per 1D" and evaluation["n_units"] == 3 * 2 * 2
    assert {"site", "recorder_model", "diel_period"} <= set(df.columns)
    assert (out / "run" / "model.safetensors").is_file()
    assert "held-out negative ELBO" in result.output
    # the shipped model fine-tuned on the survey, and the report says so
    from ecovae.pretrained import pretrained_dir
    from ecovae.run import weights_digest

    parent = json.loads((out / "run" / "run.json").read_text())["parent"]
    assert parent["weights_digest"] == weights_digest(pretrained_dir()) and "fine-tuning" in result.output
    html = (out / "report.html").read_text()
    assert "Methods card" in html and "balanced accuracy" in html
    assert f"Fine-tuned on this survey from {pretrained_dir()} (weights {parent['weights_digest']})" in html
    assert "ecovae&#39;s pretrained model" in html and "without this survey&#39;s species" in html
    # curves, reconstructions, confusion matrices, saliency, walk, projections: all embedded
    assert html.count("data:image/png;base64,") >= 15
    interpretation = json.loads((out / "eval" / "interpretation.json").read_text())
    assert interpretation["saliency"]["finite"] and interpretation["reconstruction"]["frames"] > 0
    walk = interpretation["boundary_walk"]
    assert walk["probabilities"][-1] == pytest.approx(0.9) and len(walk["audio"]) == len(walk["probabilities"])
    assert "<audio controls" in html
    # exemplars to hear: for each site, excerpts of its own recordings, embedded as Ogg
    exemplars = interpretation["exemplars"]
    assert {e["class"] for e in exemplars} == set(labels["site"])
    assert all(e["path"].startswith(e["class"] + "/") for e in exemplars)
    assert html.count("data:audio/ogg;base64,") >= len(exemplars) + len(walk["audio"])
    # the survey's oddities (the novelty top list, at most 5% of the frames) are no exemplars
    top = pd.read_csv(out / "eval" / "novelty" / "novelty_top.csv").nsmallest(int(0.05 * len(df)), "rank")
    assert len(top) >= 5 and not {(e["path"], round(e["frame_offset_s"], 3)) for e in exemplars} & set(
        zip(top["path"], top["frame_offset_s"].round(3), strict=True)
    )
    # the novelty ranking, keyed like the latents, and the diel view of each site
    scores = pd.read_parquet(out / "eval" / "novelty" / "novelty.parquet")
    assert len(scores) == len(df) and set(scores["rank"].dropna().astype(int)) == set(range(1, len(df) + 1))
    assert {"novelty_logmel", "novelty_vae", "neg_elbo"} <= set(scores.columns)
    assert "k-nearest-neighbour density" in html and "soft-clipped at 3 sd" in html  # what the score is, as run
    diel = json.loads((out / "eval" / "diel" / "diel.json").read_text())
    assert [v["group"] for v in diel["views"]] == sorted(set(labels["site"]))
    assert all(len(v["days"]) == 2 for v in diel["views"])
    metrics = pd.read_csv(out / "eval" / "metrics.csv")
    assert {"vae", "indices", "logmel"} <= set(metrics["features"])
    # every feature set through every descriptor, on the same units
    assert (metrics.groupby("features")["descriptor"].apply(set) == {"mean", "moments", "mixture"}).all()
    assert evaluation["vae"]["features"] == "vae" and "logmel" in evaluation["against"]
    assert "Verdict" in html
    assert (out / "eval" / "hardware.json").is_file() and (out / "methods.json").is_file()
    assert "━" not in result.output  # --quiet: no progress bar, the baselines' included
    # what the report says of what it shows: the VAE's descriptor and classifier beside its score; a walk too
    # faint to hear said to be so; the planted sounds among the excerpts to hear marked as the known events
    best = evaluation["vae"]
    assert f"The VAE's best ({best['descriptor']} / {best['classifier']}," in html
    assert walk["audible"] == (walk["largest_change_db"] >= 1.0)
    assert ("Too faint to hear" in html) == (not walk["audible"])
    events = pd.read_csv(out / "survey" / "events.csv")
    listen = json.loads((out / "eval" / "novelty" / "novelty.json").read_text())["listen"]
    for r in listen:
        e = events[events["path"] == r["path"]]
        hit = e[(e["start_s"] < r["frame_offset_s"] + 1.536) & (e["end_s"] > r["frame_offset_s"])]
        assert r["event"] == (hit["kind"].iloc[0] if len(hit) else None)
        assert (f"known event, {r['event']}" in html) or r["event"] is None


@pytest.mark.slow
def test_report_in_a_real_browser(quickstart, tmp_path):
    out, result = quickstart
    assert result.exit_code == 0, result.output
    browser = chromium()
    try:
        browser.get((out / "report.html").as_uri())
        images = browser.execute_script("return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth])")
        assert len(images) >= 15 and all(done and width > 0 for _, done, width in images), images
        durations = browser.execute_async_script(
            """const done = arguments[arguments.length - 1];
            const audios = [...document.querySelectorAll('audio')];
            Promise.all(audios.map(a => a.readyState >= 1 ? null : new Promise(ok => {
                a.addEventListener('loadedmetadata', ok); a.addEventListener('error', ok); a.load(); })))
              .then(() => done(audios.map(a => a.duration)));"""
        )
        assert len(durations) >= 10 and all(d > 0 for d in durations), durations
        broken = browser.execute_script(
            "return [...document.querySelectorAll('a[href^=\"#\"]')]"
            ".map(a => a.getAttribute('href').slice(1)).filter(id => !document.getElementById(id))"
        )
        assert broken == []
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        shot = tmp_path / "report.png"
        browser.save_screenshot(str(shot))
    finally:
        browser.quit()
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.std() > 0.05 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # a page, not a blank


@pytest.mark.slow
def test_report_links_the_sounds_past_its_audio_budget(quickstart):
    import re

    from ecovae.report import write_report

    out, result = quickstart
    assert result.exit_code == 0, result.output
    embedded = (out / "report.html").read_text().count("data:audio/ogg;base64,")
    report = write_report(out / "run", out / "eval", out / "small" / "report.html", audio_budget_mb=0.05)
    html = report.read_text()
    sources = re.findall(r'<audio controls preload="[a-z]+" src="([^"]+)"', html)
    kept = html.count("data:audio/ogg;base64,")
    assert kept < embedded and len(sources) == embedded  # every sound still there: embedded or linked
    files = [s for s in sources if not s.startswith("data:")]
    assert len(files) == embedded - kept and all((report.parent / s).is_file() for s in files)
    assert f"{len(files)} sounds past the report" in html


@pytest.mark.slow
def test_run_on_a_labelled_folder_then_again_resumes_without_duplicates(tmp_path, monkeypatch):
    """`ecovae run`, the command for a user's own recordings: the whole pipeline with the negative ELBO asked
    for; run again on the same folder, it trains and encodes nothing twice and every frame is there once.
    Training, encoding, the indices, the hardware check, novelty and interpretation all read the audio, yet the
    folder is searched and its labels read once a run."""
    from ecovae import survey as surveys
    from ecovae.simulate import simulate_survey

    opened, real = [], surveys.open_survey
    monkeypatch.setattr(surveys, "open_survey", lambda root, *a, **k: opened.append(str(root)) or real(root, *a, **k))

    survey = tmp_path / "survey"
    simulate_survey(survey, n_sites=3, hours=(0, 12), days=2, duration_s=6.0, seed=3, rare_events=1)
    args = [
        "run",
        str(survey),
        "--labels",
        str(survey / "labels.csv"),
        "--target",
        "habitat",
        "--out",
        str(tmp_path / "o"),
    ]
    args += ["--unit", "site,recorder", "--window", "1D", "--preset", "tiny", "--max-steps", "20", "--elbo", "--quiet"]
    args += ["--baselines", "logmel,indices", "--recorder", "recorder_model"]  # BirdNET's cost: the quickstart's
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert opened == [str(survey)]
    hardware = json.loads((tmp_path / "o" / "eval" / "hardware.json").read_text())
    assert hardware["n_recordings"] == len(pd.read_csv(survey / "labels.csv"))  # every recording of the one survey
    assert "indices" in (tmp_path / "o" / "eval" / "metrics.csv").read_text()
    assert "━" not in first.output  # --quiet: no progress bar
    scores = pd.read_parquet(tmp_path / "o" / "eval" / "novelty" / "novelty.parquet")
    assert scores["neg_elbo"].notna().all() and (tmp_path / "o" / "report.html").stat().st_size > 0
    # days at a glance are per site, not per class of what is predicted
    diel = json.loads((tmp_path / "o" / "eval" / "diel" / "diel.json").read_text())
    assert diel["by"] == "site" and [v["group"] for v in diel["views"]] == ["site1", "site2", "site3"]
    weights = (tmp_path / "o" / "run" / "model.safetensors").read_bytes()
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "(resuming)" in again.output
    assert opened == [str(survey)] * 2
    assert (tmp_path / "o" / "run" / "model.safetensors").read_bytes() == weights  # not trained again
    frames = pd.read_parquet(tmp_path / "o" / "latents.parquet")
    labels = pd.read_csv(survey / "labels.csv")
    assert len(frames) == 3 * len(labels) and not frames.duplicated(["path", "frame_in_recording"]).any()


def test_simulate_plants_rare_sounds_at_the_level_asked(tmp_path):
    """`ecovae simulate --rare-events 1 --event-db L`: events.csv says where and how loud; 40 dB is louder than 20."""
    import soundfile as sf

    rms = {}
    for level in (20, 40):
        out = tmp_path / f"s{level}"
        args = ["simulate", str(out), "--sites", "2", "--recorders", "1", "--hours", "3", "--duration", "6"]
        result = runner.invoke(app, [*args, "--rare-events", "1", "--event-db", str(level)])
        assert result.exit_code == 0, result.output
        (e,) = pd.read_csv(out / "events.csv").itertuples()
        assert e.level_db == level
        x, rate = sf.read(out / e.path)
        rms[level] = np.sqrt(np.mean(x[int(e.start_s * rate) : int(e.end_s * rate)] ** 2))
    assert rms[40] > 3 * rms[20]
