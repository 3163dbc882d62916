"""Encoding under attack: kills at the merge, a second process, reruns, changed files, linked folders."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from ecovae.audio import find_audio_files
from ecovae.cli import app
from ecovae.encode import encode
from ecovae.latents import summary_path
from ecovae.parts import OutputBusy

from .conftest import write_tone
from .test_encode import frames_for


def _survey(root: Path, n: int) -> Path:
    for i in range(n):
        write_tone(
            root / f"site{i % 3}" / f"2024050{1 + i % 5}_0{i % 10}0000.WAV", 4.0 + i % 3, freq=500 + 300 * i, seed=i
        )
    return root


def _rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values(["path", "frame_in_recording"]).reset_index(drop=True)


def _encoding_child(patch: str, root: Path, run: Path, out: Path, **kwargs) -> subprocess.Popen:
    """A real encoding process, with ``patch`` (code using ``e`` = ecovae.encode and ``time``) run
    first to hold it at the moment a test needs; stdout kept out of the way."""
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    code = (
        f"import time, ecovae.encode as e\n{patch}\n"
        f"e.encode({str(root)!r}, {str(run)!r}, {str(out)!r}, progress=False{args})\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(condition, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended first: {proc.stderr.read().decode()[-2000:]}")
        assert time.time() < deadline, "timed out waiting for the child"
        time.sleep(0.02)


def test_kill_between_the_merge_and_the_cleanup_leaves_one_row_per_frame(untrained_run, tmp_path):
    root = _survey(tmp_path / "survey", 8)
    reference = tmp_path / "reference.parquet"
    encode(root, untrained_run, reference, progress=False)

    # The child stops for good right after the merged file is renamed into place, before the
    # parts are removed (the window a scheduler's SIGKILL can hit); then it is killed by PID.
    out = tmp_path / "latents.parquet"
    patch = (
        "def stuck(path, *a, **k):\n"
        "    if str(path).endswith('.partial'):\n"
        "        time.sleep(3600)\n"
        "import ecovae.parts as parts\n"
        "parts.shutil = type('S', (), {'rmtree': staticmethod(stuck)})"
    )
    proc = _encoding_child(patch, root, untrained_run, out)
    partial = out.with_name(out.name + ".partial")
    _wait_for(lambda: out.is_file() and partial.is_dir(), proc)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(pd.read_parquet(out)) == len(pd.read_parquet(reference))  # the merge had completed

    again = encode(root, untrained_run, out, progress=False)
    assert (again.encoded, again.already_done) == (0, 8) and not partial.exists()
    a, b = _rows(reference), _rows(out)
    assert len(b) == len(a) and not b.duplicated(["path", "frame_in_recording"]).any()
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-5, rtol=1e-4)
    assert again.frames_in_output == len(a) and again.files_in_output == 8


@pytest.mark.parametrize("name", ["latents.parquet", "latents"])
def test_a_second_process_on_the_same_output_is_refused(untrained_run, tmp_path, name):
    root = _survey(tmp_path / "survey", 4)
    out = tmp_path / name
    # The first run holds the output: it sleeps in its first file, as a long file would take.
    patch = (
        "real = e.encode_stream\n"
        "def slow(*a, **k):\n"
        "    time.sleep(3600)\n"
        "    yield from real(*a, **k)\n"
        "e.encode_stream = slow"
    )
    proc = _encoding_child(patch, root, untrained_run, out)
    lock = out / "_lock" if name == "latents" else out.with_name(out.name + ".lock")
    _wait_for(lambda: lock.is_file() and lock.read_text().startswith("pid"), proc)
    try:
        with pytest.raises(OutputBusy, match=f"pid {proc.pid}"):
            encode(root, untrained_run, out, progress=False)
        result = CliRunner().invoke(
            app, ["encode", str(root), "--model", str(untrained_run), "--out", str(out), "--quiet"]
        )
        assert result.exit_code == 2 and "another 'ecovae encode'" in result.output
        assert "Traceback" not in result.output
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # The holder died: its lock went with it.
    summary = encode(root, untrained_run, out, progress=False)
    assert summary.encoded == 4 and summary.frames_in_output == len(pd.read_parquet(out))


def test_the_summary_accounts_for_the_whole_output_after_reruns(untrained_run, shared_data, tmp_path):
    root = tmp_path / "survey"
    real = sorted((shared_data / "behaviour_soundscapes").glob("*.wav"))[0].read_bytes()
    (root / "a").mkdir(parents=True)
    (root / "a" / "data_cut.wav").write_bytes(real[: len(real) // 3])  # header promises more
    sf.write(root / "a" / "silence.wav", np.zeros(48_000 * 4, dtype=np.int16), 48_000, subtype="PCM_16")
    write_tone(root / "a" / "tone.wav", 4.0)
    out = tmp_path / "latents.parquet"
    first = encode(root, untrained_run, out, progress=False)
    assert first.silent_files == ["a/silence.wav"] and list(first.truncated_files) == ["a/data_cut.wav"]

    write_tone(root / "b" / "new.wav", 4.0, seed=3)
    second = encode(root, untrained_run, out, progress=False)
    assert (second.encoded, second.already_done) == (1, 3)
    # what earlier runs found is still known: it is kept with the data, not with one run
    assert second.silent_files == ["a/silence.wav"] and list(second.truncated_files) == ["a/data_cut.wav"]
    assert second.flagged == 2 and second.files_in_output == 4
    assert second.frames_in_output == len(pd.read_parquet(out))
    saved = json.loads(summary_path(out).read_text())
    assert saved["flagged"] == 2 and saved["truncated_files"] == second.truncated_files


def test_a_killed_run_commits_on_time_not_only_on_rows(untrained_run, tmp_path):
    root = _survey(tmp_path / "survey", 12)
    reference = tmp_path / "reference.parquet"
    encode(root, untrained_run, reference, progress=False)
    out = tmp_path / "latents"
    # Slowed to about 0.3 s a file, with a frame bound it would never reach: only time commits.
    patch = "real = e.record\ndef slow(*a):\n    time.sleep(0.3)\n    real(*a)\ne.record = slow"
    proc = _encoding_child(patch, root, untrained_run, out, rows_per_part=10**9, commit_seconds=0.5)
    _wait_for(lambda: any(out.glob("part-*.parquet")), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = pd.read_parquet(out)
    assert 0 < committed["path"].nunique() < 12  # work done before the kill is kept

    summary = encode(root, untrained_run, out, progress=False)
    assert summary.already_done == committed["path"].nunique() and summary.files_in_output == 12
    pd.testing.assert_frame_equal(_rows(reference), _rows(out), check_exact=False, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["latents.parquet", "latents"])
def test_a_file_that_changed_is_encoded_again_and_its_old_rows_replaced(untrained_run, tmp_path, name):
    root = _survey(tmp_path / "survey", 3)
    full = write_tone(tmp_path / "full.wav", 20.0, seed=7)
    copying = root / "site9" / "20240601_000000.WAV"
    copying.parent.mkdir()
    data = full.read_bytes()
    copying.write_bytes(data[: len(data) // 4])  # still being copied when the first run saw it
    out = tmp_path / name
    first = encode(root, untrained_run, out, progress=False)
    rel = "site9/20240601_000000.WAV"
    assert rel in first.truncated_files
    assert 0 < (pd.read_parquet(out)["path"] == rel).sum() < frames_for(20.0)

    shutil.copyfile(full, copying)  # the copy finished
    second = encode(root, untrained_run, out, progress=False)
    assert second.changed == [rel] and (second.encoded, second.already_done) == (1, 3)
    assert rel not in second.truncated_files
    df = pd.read_parquet(out)
    assert (df["path"] == rel).sum() == frames_for(20.0)
    assert not df.duplicated(["path", "frame_in_recording"]).any()
    assert second.frames_in_output == len(df)
    assert encode(root, untrained_run, out, progress=False).changed == []


def test_linked_folders_are_followed_and_loops_counted(untrained_run, tmp_path):
    elsewhere = tmp_path / "disk2" / "siteB"
    write_tone(elsewhere / "20240101_000000.WAV", 4.0)
    write_tone(elsewhere / "20240101_010000.WAV", 4.0, seed=1)
    root = tmp_path / "survey"
    write_tone(root / "siteA" / "20240101_000000.WAV", 4.0, seed=2)
    (root / "siteB").symlink_to(elsewhere, target_is_directory=True)  # a site linked into the survey
    (root / "siteA" / "back").symlink_to(root, target_is_directory=True)  # a loop
    (root / "siteA" / "gone.wav").symlink_to(tmp_path / "nowhere.wav")  # a broken link

    rels = [p.relative_to(root).as_posix() for p in find_audio_files(root)]
    assert rels == ["siteA/20240101_000000.WAV", "siteB/20240101_000000.WAV", "siteB/20240101_010000.WAV"]
    summary = encode(root, untrained_run, tmp_path / "latents.parquet", progress=False)
    assert summary.encoded == 3
    assert set(pd.read_parquet(tmp_path / "latents.parquet")["site"]) == {"siteA", "siteB"}
    assert "loop" in summary.skipped["siteA/back/"] or "searched already" in summary.skipped["siteA/back/"]
    assert "broken link" in summary.skipped["siteA/gone.wav"]


def test_an_empty_recordings_folder_is_an_error(untrained_run, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no audio files"):
        encode(tmp_path / "empty", untrained_run, tmp_path / "latents.parquet", progress=False)
    result = CliRunner().invoke(
        app,
        ["encode", str(tmp_path / "empty"), "--model", str(untrained_run), "--out", str(tmp_path / "latents.parquet")],
    )
    assert result.exit_code == 2 and "no audio files" in result.output
    assert not (tmp_path / "latents.parquet").exists()
