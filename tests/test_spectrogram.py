"""Log-mel clips as the "Input" table of docs/model.md says, on real files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from ecovae.audio import open_recording, read_audio
from ecovae.spectrogram import SpectrogramConfig, iter_clips, log_mel, mel_frequencies

from .conftest import write_tone

CFG = SpectrogramConfig()


def test_a_whole_clip_is_7488_hops_of_64_mels():
    assert CFG.clip_samples == 2_875_392  # 59.904 s at 48 kHz
    x = np.zeros(CFG.clip_samples, dtype=np.float32)
    assert log_mel(x).shape == (7488, 64)


def test_a_tone_lands_in_its_mel_band_and_silence_is_the_floor():
    sr = 48_000
    t = np.arange(sr * 2) / sr
    for freq in (1000.0, 6000.0):
        spec = log_mel(np.sin(2 * np.pi * freq * t).astype(np.float32))
        peak_bin = int(spec.mean(0).argmax())
        assert abs(mel_frequencies(CFG)[peak_bin] - freq) / freq < 0.06
    silent = log_mel(np.zeros(sr, dtype=np.float32))
    assert torch.allclose(silent, torch.full_like(silent, np.log(1e-6)))


def test_batched_equals_one_by_one():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 48_000)).astype(np.float32)
    batched = log_mel(x)
    for i in range(3):
        torch.testing.assert_close(batched[i], log_mel(x[i]))


def test_a_long_file_streams_into_clips_equal_to_the_whole_file(tmp_path):
    path = write_tone(tmp_path / "long.wav", seconds=125.0, sr=22_050)
    rec = open_recording(path, tmp_path)
    clips = list(iter_clips(rec))
    # 125 s = 2 whole clips (119.808 s) + 5.192 s -> 3 whole frames (4.608 s)
    assert [c.n_frames for c in clips] == [39, 39, 3]
    assert [c.logmel.shape[0] for c in clips] == [7488, 7488, 576]
    audio = read_audio(rec)
    assert abs(len(audio) - 125 * 48_000) <= 2  # resampled to 48 kHz, length kept
    expected = log_mel(audio[CFG.clip_samples : 2 * CFG.clip_samples])
    torch.testing.assert_close(clips[1].logmel, expected)


def test_short_recordings(tmp_path):
    three = open_recording(write_tone(tmp_path / "a.wav", seconds=5.0), tmp_path)
    assert [c.n_frames for c in iter_clips(three)] == [3]  # 5 s -> 3 whole frames of 1.536 s
    tiny = open_recording(write_tone(tmp_path / "b.wav", seconds=1.0), tmp_path)
    assert list(iter_clips(tiny)) == []


def test_silent_frames_are_flagged(tmp_path):
    sr = 48_000
    x = np.zeros(int(sr * 1.536 * 3), dtype=np.float32)
    x[: int(sr * 1.536)] = 0.1 * np.sin(np.arange(int(sr * 1.536)) * 0.3)
    sf.write(tmp_path / "s.wav", x, sr, subtype="PCM_16")
    clip = next(iter_clips(open_recording(tmp_path / "s.wav", tmp_path)))
    assert clip.silent.tolist() == [False, True, True]


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_sample_formats_give_the_same_spectrogram(tmp_path, subtype):
    ref = open_recording(write_tone(tmp_path / "ref.wav", 4.0, subtype="FLOAT"), tmp_path)
    other = open_recording(write_tone(tmp_path / f"{subtype}.wav", 4.0, subtype=subtype), tmp_path)
    a, b = next(iter_clips(ref)).logmel, next(iter_clips(other)).logmel
    assert (a - b).abs().mean() < 0.02


def test_real_low_rate_file(shared_data):
    rec = open_recording(shared_data / "maad_jura_diel/S4A03895_20190522_060000.wav", shared_data)
    assert rec.sample_rate == 22_000
    clips = list(iter_clips(rec))
    assert [c.n_frames for c in clips] == [6]  # 10 s -> 6 whole frames
    spec = clips[0].logmel
    assert torch.isfinite(spec).all()
    freqs = mel_frequencies(CFG)
    above_nyquist = spec[:, freqs > 11_500].mean()
    below = spec[:, (freqs > 1000) & (freqs < 8000)].mean()
    assert above_nyquist < below - 3  # nothing above the original 11 kHz Nyquist
