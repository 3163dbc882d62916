"""Finding recordings, their times and labels, and rejecting broken files with a reason."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
import soundfile as sf

from ecovae.audio import (
    BadAudio,
    discover,
    find_audio_files,
    labels_from_layout,
    open_recording,
    parse_start_time,
    read_audio,
    read_labels_csv,
)

from .conftest import write_tone


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("20190522_060000.WAV", datetime(2019, 5, 22, 6, 0, 0)),
        ("S4A03895_20190522_060000.wav", datetime(2019, 5, 22, 6, 0, 0)),
        ("SMM07180_20230101_235959_0+1_.flac", datetime(2023, 1, 1, 23, 59, 59)),
        ("Borneo_Morning_01.wav", None),
        ("20191399_060000.wav", None),  # month 13: not a time
    ],
)
def test_start_time_from_recorder_names(name, expected):
    assert parse_start_time(name) == expected


def test_labels_from_folder_layout():
    assert labels_from_layout("siteA/AM01/20190522_060000.WAV") == {"site": "siteA", "recorder": "AM01"}
    assert labels_from_layout("siteA/S4A03895_20190522_060000.wav") == {"site": "siteA", "recorder": "S4A03895"}
    assert labels_from_layout("x.wav") == {}


def test_discovery_is_recursive_sorted_and_reads_labels(tmp_path):
    for rel in ["b/2.wav", "a/1.WAV", "a/deep/3.flac", "a/notes.txt", "a/.hidden.wav"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt") or "hidden" in rel:
            p.write_text("x")
        else:
            sf.write(p, np.zeros(4800, dtype=np.float32), 48_000, format="FLAC" if rel.endswith("flac") else "WAV")
    rels = [p.relative_to(tmp_path).as_posix() for p in find_audio_files(tmp_path)]
    assert rels == ["a/1.WAV", "a/deep/3.flac", "b/2.wav"]
    (tmp_path / "labels.csv").write_text("path,site,habitat\na/1.WAV,north,forest\nb/2.wav,south,\n")
    files, columns, labels = discover(tmp_path)
    assert columns == ["site", "habitat"]
    assert labels["a/1.WAV"] == {"site": "north", "habitat": "forest"}
    _, columns, labels = discover(tmp_path / "a")
    assert columns == ["site", "recorder"]  # no labels.csv there: folder layout
    assert labels["deep/3.flac"] == {"site": "deep"}


def test_labels_csv_needs_a_path_column(tmp_path):
    (tmp_path / "l.csv").write_text("file,site\nx.wav,a\n")
    with pytest.raises(ValueError, match="'path' column"):
        read_labels_csv(tmp_path / "l.csv")


def test_stereo_is_downmixed_and_rates_resampled(tmp_path):
    rec = open_recording(write_tone(tmp_path / "st.wav", 2.0, sr=8_000, channels=2), tmp_path)
    assert (rec.channels, rec.sample_rate) == (2, 8_000)
    audio = read_audio(rec)
    assert audio.ndim == 1 and abs(len(audio) - 96_000) <= 2


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("this is not audio\n" * 50), "not readable as audio"),
        (lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt "), "not readable as audio"),
    ],
)
def test_unreadable_files_raise_bad_audio_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "broken.wav"
    make(path)
    with pytest.raises(BadAudio, match=reason) as info:
        open_recording(path, tmp_path)
    assert "broken.wav" in str(info.value)


def test_non_finite_samples_raise_bad_audio(tmp_path):
    x = np.zeros(48_000 * 3, dtype=np.float32)
    x[60_000] = np.nan
    sf.write(tmp_path / "nan.wav", x, 48_000, subtype="FLOAT")
    rec = open_recording(tmp_path / "nan.wav", tmp_path)
    with pytest.raises(BadAudio, match="non-finite samples .* at 1.250 s"):
        read_audio(rec)
