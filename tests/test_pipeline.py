"""The pipeline as a library: a survey opened once and handed to every stage (a whole run: tests/test_cli.py)."""

from __future__ import annotations

import pytest

from ecovae import survey
from ecovae.simulate import simulate_survey


@pytest.fixture()
def opened(monkeypatch):
    """Every folder opened as a survey, wherever in the package it is opened."""
    calls = []
    real = survey.open_survey

    def counting(root, *args, **kwargs):
        calls.append(str(root))
        return real(root, *args, **kwargs)

    monkeypatch.setattr(survey, "open_survey", counting)
    return calls


def test_a_survey_already_open_is_used_as_it_is(tmp_path, opened):
    """A stage given a survey reads it with the model's settings and a subset of it without searching again."""
    from ecovae.spectrogram import SpectrogramConfig

    folder = tmp_path / "survey"
    simulate_survey(folder, n_sites=1, hours=(0, 12), days=1, duration_s=3.0, seed=1)
    s = survey.open_survey(folder)
    other = SpectrogramConfig(n_fft=2048)
    assert survey.as_survey(s) is s and survey.as_survey(s, spec=s.spec) is s
    assert survey.as_survey(s, spec=other).spec == other and survey.as_survey(s, spec=other).files == s.files
    part = survey.as_survey(s, rels=[s.files[1], "gone.wav"])
    assert part.files == [s.files[1]] and part.skipped == {"gone.wav": "not found under the recordings folder"}
    assert opened == [str(folder)]
    with pytest.raises(ValueError, match="already open"):
        survey.as_survey(s, labels_csv=folder / "labels.csv")
