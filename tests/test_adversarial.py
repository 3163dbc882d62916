"""The adversarial run's reproductions (issue 21): each failed on the code before its fix."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from ecovae.cli import app
from ecovae.encode import encode
from ecovae.latents import read_latents

from .conftest import write_tone

runner = CliRunner()


def _lab(root: Path, n: int = 4) -> Path:
    """Four real recordings of two sites, each with its own recorder model, and their labels CSV."""
    rows = []
    for i in range(n):
        rel = f"site{i % 2}/2024050{1 + i // 2}_0{i}0000.WAV"
        write_tone(root / rel, 4.0, seed=i, freq=2000.0 + 500 * i)
        rows.append({"path": rel, "site": f"s{i % 2}", "recorder_model": "AudioMoth" if i < 2 else "SM4"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def _refused(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def _encode_cli(lab: Path, run: Path, out: Path, *extra: str):
    return runner.invoke(app, ["encode", str(lab), "--model", str(run), "--out", str(out), "--quiet", *extra])


@pytest.mark.parametrize(
    "header, column",
    [("path,site,site", "'site' appears more than once"), ("path,frame_time,label_frame_time", "'label_frame_time'")],
)
def test_repeated_or_clashing_label_columns_are_refused_at_the_start(untrained_run, tmp_path, header, column):
    lab = _lab(tmp_path / "lab")
    rows = [",".join([p, "a", "b"]) for p in pd.read_csv(lab / "labels.csv")["path"]]
    (lab / "labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    out = tmp_path / "x.parquet"
    _refused(_encode_cli(lab, untrained_run, out), column)
    assert not out.exists()  # refused before anything was written


def test_a_label_name_with_a_slash_still_gives_its_projection(tmp_path):
    from ecovae.interpret import projections

    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"habitat/type": ["a", "b"] * 6, "site": ["s1", "s2", "s3"] * 4})
    images = projections(rng.standard_normal((12, 5)), meta, out=tmp_path, label_columns=["habitat/type", "site"])
    slashed = [p["image"] for p in images if p["label"] == "habitat/type"]
    assert len(slashed) == 2 and all((tmp_path / name).is_file() and "/" not in name for name in slashed)


def test_corrected_labels_reach_rows_already_encoded(untrained_run, tmp_path):
    lab = _lab(tmp_path / "lab")
    for out in (tmp_path / "one.parquet", tmp_path / "dataset"):
        labels = pd.read_csv(lab / "labels.csv")
        labels["site"] = ["s0", "s1", "s0", "s1"]
        labels.to_csv(lab / "labels.csv", index=False)
        encode(lab, untrained_run, out, progress=False)
        before = read_latents(out)
        labels.loc[0, "site"] = "corrected"
        labels.to_csv(lab / "labels.csv", index=False)
        summary = encode(lab, untrained_run, out, progress=False)
        after = read_latents(out)
        assert summary.encoded == 0 and summary.relabelled == [labels.loc[0, "path"]]
        got = after.groupby("path")["site"].first().to_dict()
        assert got == dict(zip(labels["path"], labels["site"], strict=True))
        # nothing else moved: same frames, same posteriors
        key = ["path", "frame_in_recording"]
        a, b = before.sort_values(key).reset_index(drop=True), after.sort_values(key).reset_index(drop=True)
        assert len(a) == len(b) and np.array_equal(a.filter(like="mu_").to_numpy(), b.filter(like="mu_").to_numpy())
        assert encode(lab, untrained_run, out, progress=False).relabelled == []  # done once


def test_a_hardware_corrected_output_grows_with_new_files(untrained_run, tmp_path):
    lab = _lab(tmp_path / "lab")
    out = tmp_path / "corrected.parquet"
    first = _encode_cli(lab, untrained_run, out, "--correct-hardware", "recorder_model")
    assert first.exit_code == 0, first.output
    write_tone(lab / "site0" / "20240503_050000.WAV", 4.0, seed=9)
    labels = pd.read_csv(lab / "labels.csv")
    labels.loc[len(labels)] = ["site0/20240503_050000.WAV", "s0", "SM4"]
    labels.to_csv(lab / "labels.csv", index=False)
    again = _encode_cli(lab, untrained_run, out, "--correct-hardware", "recorder_model")
    assert again.exit_code == 0, again.output
    assert "the output's own offsets" in again.output
    assert read_latents(out)["path"].nunique() == 5
    # a recorder the offsets were never fitted on is refused, by name, not corrected by nothing
    write_tone(lab / "site1" / "20240503_060000.WAV", 4.0, seed=10)
    labels.loc[len(labels)] = ["site1/20240503_060000.WAV", "s1", "Swift"]
    labels.to_csv(lab / "labels.csv", index=False)
    _refused(_encode_cli(lab, untrained_run, out, "--correct-hardware", "recorder_model"), "Swift")


def test_links_beside_the_output_are_never_followed(untrained_run, tmp_path):
    lab = _lab(tmp_path / "lab")
    victim = tmp_path / "precious.txt"
    victim.write_text("field notes\n")
    out = tmp_path / "x.parquet"
    os.symlink(victim, tmp_path / "x.parquet.lock")
    _refused(_encode_cli(lab, untrained_run, out), "symbolic link")
    assert victim.read_text() == "field notes\n"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.tmp").write_text("someone's file")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    os.symlink(elsewhere, dataset / "_tmp")
    _refused(_encode_cli(lab, untrained_run, dataset), "symbolic link")
    assert (elsewhere / "keep.tmp").read_text() == "someone's file"


def test_a_clean_run_leaves_no_lock_behind(untrained_run, tmp_path):
    lab = _lab(tmp_path / "lab")
    out = tmp_path / "x.parquet"
    assert _encode_cli(lab, untrained_run, out).exit_code == 0
    assert out.is_file() and not (tmp_path / "x.parquet.lock").exists()
    assert _encode_cli(lab, untrained_run, out).exit_code == 0  # and the next run takes a new one


def test_report_refuses_what_is_not_a_run_or_an_evaluation(simulated, tmp_path, read_only_dir):
    survey, run, latents = simulated
    _refused(runner.invoke(app, ["report", str(tmp_path / "nope"), str(tmp_path / "eval")]), "not a run folder")
    ev = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", str(latents), "--target", "site", "--out", str(ev), "--baselines", ""])
    assert result.exit_code == 0, result.output
    _refused(runner.invoke(app, ["report", str(run), str(tmp_path / "typo")]), "no evaluation")
    # a read-only evaluation folder: the report is written elsewhere, and the folder is not written to
    shutil.copytree(ev, read_only_dir.parent / "ro_src" / "eval")
    page = tmp_path / "page" / "report.html"
    result = runner.invoke(app, ["report", str(run), str(read_only_dir / "eval"), "--out", str(page)])
    assert result.exit_code == 0, result.output
    assert "training curves" in page.read_text()
    # a read-only place for the report itself: one line, no traceback
    _refused(runner.invoke(app, ["report", str(run), str(ev), "--out", str(read_only_dir / "r.html")]), "read-only")


def test_report_counts_parameters_without_building_the_model(simulated, tmp_path):
    survey, run, latents = simulated
    crafted = tmp_path / "run"
    shutil.copytree(run, crafted)
    config = json.loads((crafted / "config.json").read_text())
    config["model"]["stack_channels"] = [8, 16, 16, 30000]  # 32 GB if it were allocated
    (crafted / "config.json").write_text(json.dumps(config))
    from ecovae.report import methods_card

    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "evaluation.json").write_text("{}")
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    card = methods_card(crafted, ev)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert int(card["Architecture"]["parameters"].replace(",", "")) > 1_000_000_000 and grown_mb < 500


def test_resume_passes_over_a_checkpoint_that_is_not_lightnings(tmp_path):
    from ecovae.train import newest_readable_checkpoint

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"state_dict": {}, "global_step": 20, "pytorch-lightning_version": "2.5"}, ckpts / "step20.ckpt")
    torch.save({"hello": torch.zeros(2)}, ckpts / "last.ckpt")  # newer, loads, but is no checkpoint of a run
    assert newest_readable_checkpoint(ckpts).name == "step20.ckpt"


@pytest.mark.parametrize("steps", ["-5", "-1", "0"])
def test_a_step_count_below_one_is_refused(tmp_path, steps):
    lab = _lab(tmp_path / "lab")
    result = runner.invoke(
        app, ["train", str(lab), "--out", str(tmp_path / "run"), "--preset", "tiny", "--max-steps", steps, "--quiet"]
    )
    _refused(result, "--max-steps must be at least 1")


def test_simulate_into_a_read_only_folder_is_one_line(read_only_dir):
    result = runner.invoke(app, ["simulate", str(read_only_dir / "survey"), "--duration", "2", "--hours", "6"])
    _refused(result, "read-only")


def test_dataset_outputs_of_two_models_are_refused_by_every_reader(untrained_run, tmp_path):
    from ecovae.model import preset
    from ecovae.run import init_run

    lab = _lab(tmp_path / "lab")
    dataset = tmp_path / "dataset"
    encode(lab, untrained_run, dataset, progress=False)
    other = tmp_path / "other"
    encode(lab, init_run(tmp_path / "other_run", preset("tiny"), seed=7), other, progress=False)
    for part in other.glob("part-*.parquet"):
        shutil.copy(part, dataset / ("x" + part.name[4:]).replace("x", "part-9", 1))
    with pytest.raises(ValueError, match="2 different models"):
        read_latents(dataset)
    result = runner.invoke(app, ["plot", "diel", str(dataset), "--out", str(tmp_path / "diel")])
    _refused(result, "different models")


def test_an_upper_case_parquet_name_is_a_file(untrained_run, tmp_path):
    lab = _lab(tmp_path / "lab")
    out = tmp_path / "X.PARQUET"
    assert _encode_cli(lab, untrained_run, out).exit_code == 0
    assert out.is_file() and pq.read_metadata(out).num_rows > 0


def test_a_folder_of_broken_files_fails(untrained_run, tmp_path):
    lab = tmp_path / "broken"
    lab.mkdir()
    (lab / "a.wav").write_bytes(b"")
    (lab / "b.wav").write_text("not audio\n" * 50)
    _refused(_encode_cli(lab, untrained_run, tmp_path / "x.parquet"), "no file could be encoded", "skipped: 2")


def test_a_damaged_part_is_named(untrained_run, tmp_path):
    lab = _lab(tmp_path / "lab")
    dataset = tmp_path / "dataset"
    encode(lab, untrained_run, dataset, progress=False)
    part = sorted(dataset.glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:100])
    _refused(_encode_cli(lab, untrained_run, dataset), part.name, "damaged")


def test_evaluate_says_what_it_leaves_out_and_refuses_an_identifier(simulated, tmp_path):
    survey, run, latents = simulated
    frames = pd.read_parquet(latents)
    first = sorted(frames["path"].unique())[0]
    frames.loc[frames["path"] == first, "site"] = None
    unlabelled = tmp_path / "unlabelled.parquet"
    frames.to_parquet(unlabelled)
    ev = tmp_path / "ev"
    result = runner.invoke(app, ["evaluate", str(unlabelled), "--target", "site", "--out", str(ev), "--baselines", ""])
    assert result.exit_code == 0, result.output
    assert "left out 1 units with no 'site' label" in result.output and first in result.output
    assert json.loads((ev / "evaluation.json").read_text())["unlabelled_units"] == [first]

    frames["serial"] = frames["path"]  # one value per recording: an identifier, not a class
    frames["site"] = frames["site"].fillna("x")
    many = tmp_path / "many.parquet"
    sub = frames[frames["frame_in_recording"] < 2].copy()  # 5 copies of each recording's first frames: 240 units
    sub = pd.concat([sub.assign(path=sub["path"] + f"_{k}", serial=sub["path"] + f"_{k}") for k in range(5)])
    sub.to_parquet(many)
    args = ["evaluate", str(many), "--target", "serial", "--out", str(tmp_path / "e2"), "--baselines", ""]
    _refused(runner.invoke(app, args), "different values", "identifier")


def test_moments_need_the_log_variances(simulated, tmp_path):
    survey, run, latents = simulated
    frames = pd.read_parquet(latents)
    no_spread = tmp_path / "mu_only.parquet"
    frames.drop(columns=[c for c in frames if c.startswith("logvar_")]).to_parquet(no_spread)
    args = ["evaluate", str(no_spread), "--target", "site", "--out", str(tmp_path / "e"), "--baselines", ""]
    _refused(runner.invoke(app, args), "log-variance")


def test_labels_keep_their_types_and_a_schema_is_written(untrained_run, tmp_path):
    lab = _lab(tmp_path / "lab")
    labels = pd.read_csv(lab / "labels.csv")
    labels["hour"] = [0, 1, 2, 3]
    labels["duration_s"] = [4.0, 4.0, 4.5, 4.0]
    labels["deployed"] = ["2024-05-01T00:00:00+10:00"] * 4
    labels["code"] = ["007", "008", "010", "011"]
    labels.to_csv(lab / "labels.csv", index=False)
    out = tmp_path / "typed.parquet"
    encode(lab, untrained_run, out, progress=False)
    types = {f.name: f.type for f in pq.read_schema(out)}
    assert types["hour"] == pa.int64() and types["duration_s"] == pa.float64()
    assert types["deployed"] == pa.timestamp("ms", tz="UTC") and types["code"] == pa.string()
    frames = read_latents(out)
    assert set(frames.loc[frames["hour"] >= 2, "path"]) == set(labels.loc[labels["hour"] >= 2, "path"])
    assert frames["deployed"].iloc[0] == pd.Timestamp("2024-04-30T14:00:00Z")
    schema = json.loads((tmp_path / "typed.labels_schema.json").read_text())
    assert {c["name"]: c["type"] for c in schema["columns"]}["hour"] == "int64"
    assert "frame_time" in schema["times"]


def test_an_audiomoth_clock_offset_is_read_from_its_metadata(untrained_run, tmp_path):
    """AudioMoth writes its clock's zone in the WAV comment: frame_time then has a known instant. A real
    AudioMoth file of the corpus says UTC; one written here says UTC+2; a file without it says nothing."""
    import soundfile as sf

    root = tmp_path / "moth"
    (root / "s").mkdir(parents=True)
    with sf.SoundFile(root / "s" / "20190522_060000.WAV", "w", 48_000, 1, "PCM_16") as f:
        f.comment = "Recorded at 06:00:00 22/05/2019 (UTC+2) by AudioMoth 24F319055FD95ED8 at medium gain."
        f.write(np.zeros(48_000 * 4, np.float32) + 0.01 * np.random.default_rng(0).standard_normal(48_000 * 4))
    write_tone(root / "s" / "20190522_070000.WAV", 4.0)
    corpus = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "opensoundscape_field" / "audiomoth_gps.wav"
    if corpus.is_file():
        shutil.copy(corpus, root / "s" / "20240528_100000.WAV")
    out = tmp_path / "moth.parquet"
    encode(root, untrained_run, out, progress=False)
    offsets = read_latents(out).groupby("path")["utc_offset_min"].first()
    assert offsets["s/20190522_060000.WAV"] == 120 and pd.isna(offsets["s/20190522_070000.WAV"])
    if corpus.is_file():
        assert offsets["s/20240528_100000.WAV"] == 0
    assert pq.read_schema(out).field("utc_offset_min").type == pa.int16()
