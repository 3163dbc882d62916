"""Interpretation a reader can see and hear: the walk's geometry, where energy moves, audible steps."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from ecovae.audio import open_recording, read_audio
from ecovae.interpret import (
    BANDS,
    LinearScore,
    Walk,
    band_change,
    coarse_grid,
    mel_to_audio,
    walk_points,
    write_walk_audio,
)
from ecovae.spectrogram import SpectrogramConfig, log_mel, mel_frequencies

SPEC = SpectrogramConfig()


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_the_walk_reaches_each_requested_probability_under_a_known_linear_score():
    score = LinearScore(np.array([2.0, 0.0, -1.0]), b=-1.0)
    start = np.array([-1.0, 5.0, 0.0])  # score -3: p = 0.047
    distances, points = walk_points(score, start, (0.1, 0.5, 0.9, 0.99))
    np.testing.assert_allclose(points[0], start)
    np.testing.assert_allclose(_sigmoid(score(points[1:])), [0.1, 0.5, 0.9, 0.99], rtol=1e-9)
    assert np.all(np.diff(distances) > 0)
    # it moves along the normal only: the distance walked is the distance between the points
    np.testing.assert_allclose(np.linalg.norm(points - start, axis=1), distances)
    np.testing.assert_allclose(points[:, 1], 5.0)
    # requested values the start has already passed are not walked back to
    _, points = walk_points(score, np.array([0.5, 0.0, 0.0]), (0.1, 0.5, 0.9))  # start p = 0.5
    np.testing.assert_allclose(_sigmoid(score(points[1:])), [0.9])


def test_band_change_says_where_the_energy_moves():
    freqs = mel_frequencies(SPEC)
    start = np.zeros((192, SPEC.n_mels))
    end = start.copy()
    end[:, freqs >= 8000] += 1.0  # one neper more above 8 kHz
    walk = Walk("A", "B", [0.0, 1.0], [0.1, 0.9], spectrograms=[start, end])
    per_mel, coarse = band_change(walk, SPEC)
    assert coarse["above 8 kHz"] == pytest.approx(20 / np.log(10)) and coarse["below 1 kHz"] == 0
    assert coarse["1-2 kHz"] == 0 and coarse["2-8 kHz"] == 0
    np.testing.assert_allclose(walk.differences[0], 0)
    assert per_mel.shape == (SPEC.n_mels,)


def test_the_saliency_grid_sums_each_frame_and_band():
    freqs = mel_frequencies(SPEC)
    grid = coarse_grid(np.ones((3 * SPEC.frame_hops + 5, SPEC.n_mels)), SPEC)  # a partial frame is left out
    per_band = [((freqs >= lo) & (freqs < hi)).sum() * SPEC.frame_hops for lo, hi in BANDS.values()]
    np.testing.assert_allclose(grid, np.tile(per_band, (3, 1)))


def test_mel_inversion_gives_audio_of_the_right_length_that_sounds_like_the_input(shared_data, tmp_path):
    rec = open_recording(shared_data / "maad_jura_diel/S4A03895_20190522_060000.wav", shared_data)
    audio = read_audio(rec)[: 2 * SPEC.frame_samples]
    logmel = log_mel(audio, SPEC).numpy()  # (hops, mels)
    out = mel_to_audio(logmel, SPEC)
    assert out.shape == (logmel.shape[0] * SPEC.hop_length,) and np.isfinite(out).all() and np.abs(out).max() > 0
    # the phase is invented, the spectrum is not: the band profile of the sound matches the input's
    again = log_mel(out, SPEC).numpy()
    assert np.corrcoef(again.mean(0), logmel.mean(0))[0, 1] > 0.9
    walk = Walk("A", "B", [0.0, 1.0], [0.2, 0.9], spectrograms=[logmel, logmel + 1.0])
    names = write_walk_audio(walk, SPEC, tmp_path)
    quiet, loud = (sf.read(tmp_path / n)[0] for n in names)
    assert len(quiet) == len(loud) == round(len(out) * 32_000 / SPEC.sample_rate)
    assert np.abs(loud).max() > 2 * np.abs(quiet).max()  # one gain for every step: +1 neper is heard louder
