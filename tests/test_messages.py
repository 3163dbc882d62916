"""Messages a user can act on: each names the file and what to do, with no traceback; and file modes."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ecovae.audio import discover
from ecovae.cli import app
from ecovae.latents import latents_schema

from .conftest import fill, write_tone

runner = CliRunner()


def _survey(root: Path, n: int = 3) -> Path:
    for i in range(n):
        write_tone(root / f"site{i}" / f"20240501_0{i}0000.WAV", 4.0, seed=i)
    return root


def _ok_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for needle in needles:
        assert needle in result.output, result.output


def test_a_read_only_output_disk_is_named(untrained_run, tmp_path, read_only_dir):
    data = _survey(tmp_path / "data")
    result = runner.invoke(
        app, ["train", str(data), "--out", str(read_only_dir / "run"), "--preset", "tiny", "--quiet"]
    )
    _ok_error(result, "Read-only file system", str(read_only_dir / "run"), "choose another --out")
    result = runner.invoke(
        app,
        [
            "encode",
            str(data),
            "--model",
            str(untrained_run),
            "--out",
            str(read_only_dir / "latents.parquet"),
            "--quiet",
        ],
    )
    _ok_error(result, "Read-only file system", "choose another --out")


def test_a_full_output_disk_is_named_and_leaves_nothing_half_written(untrained_run, tmp_path, small_disk):
    data = _survey(tmp_path / "data", 6)
    disk = small_disk(1024)
    out = disk / "latents"
    filler = fill(disk, leave=8192)  # room for the lock and folders, not for the parts
    result = runner.invoke(app, ["encode", str(data), "--model", str(untrained_run), "--out", str(out), "--quiet"])
    _ok_error(result, "No space left on device", "choose another --out")
    assert not list(out.glob("part-*.parquet")) and not list(out.rglob("*.tmp"))
    filler.unlink()
    result = runner.invoke(app, ["encode", str(data), "--model", str(untrained_run), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert pd.read_parquet(out)["path"].nunique() == 6


def test_a_truncated_or_mismatched_model_is_named(untrained_run, tmp_path):
    data = _survey(tmp_path / "data")
    cut = tmp_path / "cut_run"
    shutil.copytree(untrained_run, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    result = runner.invoke(app, ["encode", str(data), "--model", str(cut), "--out", str(tmp_path / "a.parquet")])
    _ok_error(result, str(weights), "truncated")

    other = tmp_path / "other_run"
    shutil.copytree(untrained_run, other)
    config = (other / "config.json").read_text().replace('"latent_dim": 16', '"latent_dim": 8')
    (other / "config.json").write_text(config)
    result = runner.invoke(app, ["encode", str(data), "--model", str(other), "--out", str(tmp_path / "b.parquet")])
    _ok_error(result, str(other / "model.safetensors"), str(other / "config.json"), "different runs")


def test_a_latin1_labels_csv_is_named_with_the_fix(untrained_run, tmp_path):
    data = _survey(tmp_path / "data")
    labels = tmp_path / "labels.csv"
    labels.write_bytes("path,site\nsite0/20240501_000000.WAV,Forêt\n".encode("latin-1"))
    result = runner.invoke(
        app,
        [
            "encode",
            str(data),
            "--model",
            str(untrained_run),
            "--out",
            str(tmp_path / "a.parquet"),
            "--labels",
            str(labels),
        ],
    )
    _ok_error(result, str(labels), "UTF-8")


def test_evaluate_on_a_missing_or_empty_latents_file(tmp_path):
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "nope.parquet"), "--target", "site", "--out", str(tmp_path / "eval")]
    )
    _ok_error(result, str(tmp_path / "nope.parquet"), "ecovae encode")
    empty = tmp_path / "empty.parquet"
    pq.write_table(latents_schema(["site"], 16).empty_table(), empty)
    result = runner.invoke(app, ["evaluate", str(empty), "--target", "site", "--out", str(tmp_path / "eval")])
    _ok_error(result, str(empty), "0 rows")


def test_labels_naming_missing_files_and_duplicates_are_warned(tmp_path, caplog):
    data = _survey(tmp_path / "data")
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,site\n"
        "site0/20240501_000000.WAV,a\nsite0/20240501_000000.WAV,b\n"  # listed twice
        "site1/20240501_010000.WAV,a\n"
        "gone/1.wav,a\ngone/2.wav,a\n"  # not there
    )
    with caplog.at_level(logging.WARNING):
        files, _, by_path = discover(data, labels)
    text = caplog.text
    assert "1 paths are listed more than once" in text and "site0/20240501_000000.WAV" in text
    assert "2 of 4 listed paths are not audio files" in text and "gone/1.wav" in text
    assert "1 of 3 files" in text and "site2/20240501_020000.WAV" in text  # on disk, not in the CSV
    assert by_path["site0/20240501_000000.WAV"] == {"site": "b"} and len(files) == 3


def test_an_unreadable_file_says_why(tmp_path):
    secret = write_tone(tmp_path / "secret.wav", 2.0)
    os.chmod(secret, 0o000)
    code = (
        "from pathlib import Path; from ecovae.audio import BadAudio, open_recording\n"
        f"try:\n    open_recording(Path({str(secret)!r}), Path({str(tmp_path)!r}))\n"
        "except BadAudio as e:\n    print(e)\n"
    )

    def without_root_override() -> None:
        # root reads anything: drop the capabilities that let it (PR_CAPBSET_DROP of
        # CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH), so the child is refused as a user would be
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        for cap in (1, 2):
            libc.prctl(24, cap, 0, 0, 0)

    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        preexec_fn=without_root_override if os.geteuid() == 0 else None,
    )
    if done.returncode != 0 or not done.stdout.strip():
        pytest.skip(
            f"cannot make a file unreadable here (still read: {done.stdout.strip()[-200:]}{done.stderr.strip()[-200:]})"
        )
    assert str(secret) in done.stdout and "Permission denied" in done.stdout
    assert "System error" not in done.stdout


def test_outputs_get_the_umask_mode(untrained_run, tmp_path):
    from ecovae.model import preset
    from ecovae.run import init_run

    old = os.umask(0o022)
    try:
        run = init_run(tmp_path / "run", preset("tiny"))
        data = _survey(tmp_path / "data", 1)
        runner.invoke(app, ["encode", str(data), "--model", str(run), "--out", str(tmp_path / "l.parquet"), "--quiet"])
    finally:
        os.umask(old)
    for path in [run / "model.safetensors", run / "config.json", tmp_path / "l.parquet", tmp_path / "l.summary.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
