"""The command line as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from ecovae.cli import app

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
def test_quickstart_end_to_end(tmp_path):
    out = tmp_path / "qs"
    result = runner.invoke(
        app,
        [
            "quickstart",
            "--out",
            str(out),
            "--steps",
            "20",
            "--duration",
            "6",
            "--sites",
            "3",
            "--days",
            "2",
            "--hours",
            "0,8,16",
            "--quiet",
        ],
    )
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
    html = (out / "report.html").read_text()
    assert "Methods card" in html and "balanced accuracy" in html
    # curves, reconstructions, confusion matrices, saliency, walk, projections: all embedded
    assert html.count("data:image/png;base64,") >= 15
    interpretation = json.loads((out / "eval" / "interpretation.json").read_text())
    assert interpretation["saliency"]["finite"] and interpretation["reconstruction"]["frames"] > 0
    walk = interpretation["boundary_walk"]
    assert walk["probabilities"][-1] == pytest.approx(0.9) and len(walk["audio"]) == len(walk["probabilities"])
    assert html.count("data:audio/wav;base64,") == len(walk["audio"]) and "<audio controls" in html
    metrics = pd.read_csv(out / "eval" / "metrics.csv")
    assert {"vae", "indices", "logmel"} <= set(metrics["features"])
    # every feature set through every descriptor, on the same units
    assert (metrics.groupby("features")["descriptor"].apply(set) == {"mean", "moments", "mixture"}).all()
    assert evaluation["vae"]["features"] == "vae" and "logmel" in evaluation["against"]
    assert "Verdict" in html
    assert (out / "eval" / "hardware.json").is_file() and (out / "methods.json").is_file()
