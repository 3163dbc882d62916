"""The simulator: deterministic, labelled, and shaped like the soundscapes it claims to be."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ecovae.audio import open_recording
from ecovae.simulate import (
    BIRDS,
    RECORDER_MODELS,
    SR,
    recorder_response,
    simulate_recording,
    simulate_survey,
)
from ecovae.spectrogram import SpectrogramConfig, iter_clips, mel_frequencies

FREQS = mel_frequencies(SpectrogramConfig())


def band_level(x: np.ndarray, lo: float, hi: float) -> float:
    """Mean power (dB) of x between lo and hi Hz."""
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return 10 * np.log10(spec[(f >= lo) & (f < hi)].mean() + 1e-20)


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    out = tmp_path_factory.mktemp("survey")
    simulate_survey(out, n_sites=3, recorders_per_site=2, hours=(0.0, 6.0), duration_s=8.0, seed=3)
    return out


def test_survey_layout_and_ground_truth(survey):
    labels = pd.read_csv(survey / "labels.csv")
    assert len(labels) == 3 * 2 * 2
    assert {
        "site",
        "habitat",
        "degradation",
        "recorder",
        "recorder_model",
        "recorded_at",
        "diel_period",
        "birds",
        "insects",
        "frogs",
        "rain",
        "wind",
        "traffic",
        "aircraft",
    } <= set(labels.columns)
    assert labels["recorder_model"].nunique() == 2 and labels["site"].nunique() == 3
    assert labels["degradation"].is_monotonic_increasing
    for rel in labels["path"]:
        info = sf.info(survey / rel)
        assert (info.samplerate, info.channels) == (SR, 1) and abs(info.duration - 8.0) < 1e-3
    night = labels[labels["diel_period"] == "night"]
    assert (night["birds"] == 0).all()  # no birds sing at midnight
    # the name carries the time, as an AudioMoth's does
    rec = open_recording(survey / labels["path"][1], survey)
    assert rec.start_time.hour == 6


def test_same_seed_same_files(survey, tmp_path):
    simulate_survey(tmp_path, n_sites=3, recorders_per_site=2, hours=(0.0, 6.0), duration_s=8.0, seed=3, workers=1)
    for rel in pd.read_csv(survey / "labels.csv")["path"]:
        assert (
            hashlib.sha256((survey / rel).read_bytes()).digest()
            == hashlib.sha256((tmp_path / rel).read_bytes()).digest()
        )
    other = tmp_path / "other"
    simulate_survey(other, n_sites=3, recorders_per_site=2, hours=(0.0, 6.0), duration_s=8.0, seed=4)
    rel = pd.read_csv(survey / "labels.csv")["path"][0]
    assert (survey / rel).read_bytes() != (other / rel).read_bytes()


def test_rare_events_are_planted_where_events_csv_says_and_nowhere_else(survey, tmp_path):
    simulate_survey(tmp_path, n_sites=3, recorders_per_site=2, hours=(0.0, 6.0), duration_s=8.0, seed=3, rare_events=2)
    events = pd.read_csv(tmp_path / "events.csv")
    assert (events["level_db"] == 30.0).all()
    labels = pd.read_csv(tmp_path / "labels.csv")
    assert len(events) == 2 and set(events["kind"]) == {"siren", "chainsaw"}
    assert set(labels.loc[labels["rare_event"] == 1, "path"]) == set(events["path"])
    for rel in labels["path"]:  # the rest of the survey is the survey without events, byte for byte
        same = (survey / rel).read_bytes() == (tmp_path / rel).read_bytes()
        assert same != (rel in set(events["path"]))
    for e in events.itertuples():  # the sound is where events.csv says, and only there
        x, _ = sf.read(tmp_path / e.path)
        clean, _ = sf.read(survey / e.path)
        assert 0 <= e.start_s < e.end_s <= 8.0 and 3.0 <= e.end_s - e.start_s <= 5.0
        inside = np.zeros(len(x), bool)
        inside[int(e.start_s * SR) : int(e.end_s * SR)] = True
        gain = x[~inside] @ clean[~inside] / (clean[~inside] @ clean[~inside])  # the file may be scaled down
        added = x - gain * clean
        assert np.sqrt(np.mean(added[inside] ** 2)) > 100 * np.sqrt(np.mean(added[~inside] ** 2))


def test_dawn_chorus_is_in_the_bird_bands_and_degradation_adds_low_noise():
    species = {"birds": list(BIRDS), "insects": [], "frogs": []}
    sm4 = RECORDER_MODELS[1]
    dawn, _ = simulate_recording(np.random.default_rng(0), 20, 6.0, degradation=0.0, species=species, recorder=sm4)
    night, _ = simulate_recording(np.random.default_rng(0), 20, 1.0, degradation=0.0, species=species, recorder=sm4)
    assert band_level(dawn, 2000, 9000) > band_level(night, 2000, 9000) + 10
    intact, _ = simulate_recording(np.random.default_rng(1), 20, 8.0, degradation=0.0, species=species, recorder=sm4)
    degraded, present = simulate_recording(
        np.random.default_rng(1), 20, 8.0, degradation=1.0, species=species, recorder=sm4
    )
    assert present["traffic"]
    assert band_level(degraded, 50, 1000) > band_level(intact, 50, 1000) + 6


def test_recorder_models_differ_in_response_and_noise_floor():
    white = np.random.default_rng(0).standard_normal(SR * 4).astype(np.float32) * 0.01
    moth, sm4 = RECORDER_MODELS
    a = recorder_response(white, moth, np.random.default_rng(1))
    b = recorder_response(white, sm4, np.random.default_rng(1))
    assert band_level(a, 3000, 4000) - band_level(b, 3000, 4000) > 3  # AudioMoth's resonance
    assert band_level(b, 100, 200) - band_level(a, 100, 200) > 3  # its steeper low cut
    quiet_a = recorder_response(np.zeros(SR, np.float32), moth, np.random.default_rng(2))
    quiet_b = recorder_response(np.zeros(SR, np.float32), sm4, np.random.default_rng(2))
    assert quiet_a.std() > 3 * quiet_b.std()  # higher self-noise


def test_spectrograms_have_structure_not_a_test_tone(survey):
    rel = pd.read_csv(survey / "labels.csv").query("diel_period == 'dawn'")["path"].iloc[0]
    spec = next(iter_clips(open_recording(survey / rel, survey))).logmel.numpy()
    per_band = spec.mean(0)
    assert per_band.max() - per_band.min() > 3  # a shaped spectrum
    assert spec.std(0)[(FREQS > 2000) & (FREQS < 9000)].mean() > 0.5  # events come and go in time
