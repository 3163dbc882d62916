"""The one survey reader, and the recorder offsets as a scikit-learn transformer."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from ecovae.recorder_offsets import RecorderOffsets, spectra_table
from ecovae.spectrogram import SpectrogramConfig
from ecovae.survey import open_survey, recording_clips

from .conftest import write_tone


@pytest.fixture
def mixed_folder(tmp_path):
    """Two good recordings in site folders, and one of each kind of bad file."""
    write_tone(tmp_path / "siteA" / "rec1" / "a.wav", 4.0, freq=2000)
    write_tone(tmp_path / "siteB" / "rec2" / "b.wav", 3.5, sr=32_000, freq=5000)
    (tmp_path / "siteA" / "rec1" / "empty.wav").write_bytes(b"")
    (tmp_path / "siteA" / "rec1" / "corrupt.wav").write_bytes(b"RIFF" + bytes(range(256)) * 4)
    write_tone(tmp_path / "siteB" / "rec2" / "short.wav", 0.5)
    return tmp_path


def test_readable_recordings_come_in_order_and_every_bad_file_is_skipped_with_its_reason(mixed_folder, caplog):
    survey = open_survey(mixed_folder)
    assert len(survey.files) == 5 and survey.skipped == {}
    got = list(survey.recordings())
    assert [rec.relpath for rec, _ in got] == ["siteA/rec1/a.wav", "siteB/rec2/b.wav"]
    assert got[1][0].labels == {"site": "siteB", "recorder": "rec2"}  # labels from the folder layout
    frame = SpectrogramConfig().frame_seconds
    assert [sum(c.n_frames for c in clips) for _, clips in got] == [int(4.0 // frame), int(3.5 // frame)]
    assert set(survey.skipped) == {"siteA/rec1/empty.wav", "siteA/rec1/corrupt.wav", "siteB/rec2/short.wav"}
    assert "empty" in survey.skipped["siteA/rec1/empty.wav"]
    assert "not readable as audio" in survey.skipped["siteA/rec1/corrupt.wav"]
    assert "shorter than one frame" in survey.skipped["siteB/rec2/short.wav"]
    assert all(rel in caplog.text for rel in survey.skipped)


def test_a_subset_of_recordings_and_a_missing_one(mixed_folder):
    survey = open_survey(mixed_folder, rels=["siteB/rec2/b.wav", "siteC/gone.wav"])
    assert survey.files == ["siteB/rec2/b.wav"]
    assert "not found" in survey.skipped["siteC/gone.wav"]
    assert [rec.relpath for rec, _ in survey.recordings()] == ["siteB/rec2/b.wav"]


def test_reading_in_worker_processes_gives_what_reading_here_gives(mixed_folder):
    read = partial(recording_clips, spec=SpectrogramConfig())
    here, there = open_survey(mixed_folder), open_survey(mixed_folder)
    a = [(rec.relpath, clips) for rec, clips in here.read(read)]
    b = [(rec.relpath, clips) for rec, clips in there.read(read, workers=2)]
    assert [r for r, _ in a] == [r for r, _ in b] == ["siteA/rec1/a.wav", "siteB/rec2/b.wav"]
    for (_, x), (_, y) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[0].logmel.numpy(), y[0].logmel.numpy())
    assert here.skipped.keys() == there.skipped.keys()


def test_a_folder_without_audio_is_an_error_that_names_it(tmp_path):
    (tmp_path / "notes.txt").write_text("no audio here")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        open_survey(tmp_path)


def test_recorder_offsets_take_the_recorder_as_a_column_inside_a_pipeline():
    rng = np.random.default_rng(0)
    site = np.repeat([0, 1], 20)
    recorder = np.tile(["bright", "dull"], 20)
    spectra = rng.normal(0, 0.1, (40, 6)) + site[:, None] * 0.5 + np.where(recorder == "bright", 2.0, -2.0)[:, None]
    table = spectra_table(spectra, recorder)
    corrected = RecorderOffsets().fit_transform(table)  # fit_transform, as any transformer
    assert corrected.shape == (40, 6)
    assert abs(corrected[recorder == "bright"].mean() - corrected[recorder == "dull"].mean()) < 0.05
    pipe = make_pipeline(RecorderOffsets(), LogisticRegression()).fit(table, site)
    assert pipe.score(table, site) == 1.0
    assert list(pipe[0].get_feature_names_out()) == [f"mel_{i:03d}" for i in range(6)]
    assert pipe[0].n_features_in_ == 7
    with pytest.raises(ValueError, match="no recorder column 'recorder'"):
        RecorderOffsets().fit(table.drop(columns="recorder"))
    with pytest.raises(ValueError, match="DataFrame"):
        RecorderOffsets().fit(spectra)
    by_index = RecorderOffsets(recorder=0).fit(table.to_numpy(dtype=object))
    np.testing.assert_allclose(by_index.offset("bright"), pipe[0].offset("bright"))


def test_recorder_offsets_pass_scikit_learns_estimator_checks():
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(RecorderOffsets(recorder=0), on_fail=None)
    # check_dtype_object puts a dict in column 0, which is the recorder column here: any value names a recorder.
    # check_array_api_input needs SCIPY_ARRAY_API set.
    allowed = {"check_dtype_object", "check_array_api_input"}
    failed = {r["check_name"]: str(r["exception"])[:200] for r in results if r["status"] == "failed"}
    assert set(failed) <= allowed, failed
    assert sum(r["status"] == "passed" for r in results) >= 40
