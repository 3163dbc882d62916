"""Spectrograms: 48 kHz audio to log-mel clips, as the "Input" table of docs/model.md says.

One implementation for training and encoding alike. A recording is cut into
clips of 39 frames (59.904 s); each clip's spectrogram is computed on its own
samples, so clips of a long file are independent and the file is streamed.
A final piece shorter than a clip becomes a shorter clip of whole frames; what
is left after the last whole frame (under 1.536 s) is counted, not encoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch

from ecovae.audio import Recording, iter_blocks


@dataclass(frozen=True)
class SpectrogramConfig:
    sample_rate: int = 48_000
    n_fft: int = 512
    win_length: int = 512
    hop_length: int = 384  # 8 ms: 125 hops per second
    n_mels: int = 64
    f_min: float = 150.0
    f_max: float = 15_000.0
    log_floor: float = 1e-6
    frame_hops: int = 192  # 1.536 s: one latent vector per frame
    clip_frames: int = 39  # 59.904 s

    @property
    def frame_samples(self) -> int:
        return self.frame_hops * self.hop_length

    @property
    def clip_samples(self) -> int:
        return self.clip_frames * self.frame_samples

    @property
    def frame_seconds(self) -> float:
        return self.frame_samples / self.sample_rate

    @property
    def clip_seconds(self) -> float:
        return self.clip_samples / self.sample_rate

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=8)
def _mel_filters(cfg: SpectrogramConfig) -> torch.Tensor:
    import librosa  # heavy import, only where the filters are built

    f_max = min(cfg.f_max, cfg.sample_rate / 2)  # clamp to Nyquist for a low target rate
    fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=f_max)
    return torch.from_numpy(fb.astype(np.float32))  # (mels, n_fft // 2 + 1)


def mel_frequencies(cfg: SpectrogramConfig) -> np.ndarray:
    """Centre frequency in Hz of each mel bin (for plot axes)."""
    import librosa

    f_max = min(cfg.f_max, cfg.sample_rate / 2)
    return librosa.mel_frequencies(n_mels=cfg.n_mels + 2, fmin=cfg.f_min, fmax=f_max)[1:-1]


def log_mel(audio: torch.Tensor | np.ndarray, cfg: SpectrogramConfig = SpectrogramConfig()) -> torch.Tensor:
    """Log-mel spectrogram of mono audio: (..., samples) -> (..., hops, mels).

    Hann window, magnitude STFT, mel filter bank, natural log of max(mel, floor).
    Hop k is centred on sample k * hop (zero padding at the edges), and a piece
    of n samples gives n // hop hops, so a whole clip gives exactly 7488.
    """
    x = torch.as_tensor(audio, dtype=torch.float32)
    lead = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])
    n_hops = x.shape[-1] // cfg.hop_length
    window = torch.hann_window(cfg.win_length, device=x.device)
    spec = torch.stft(
        x,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    ).abs()  # (B, freqs, hops + 1)
    mel = torch.matmul(_mel_filters(cfg).to(x.device), spec[..., :n_hops])  # (B, mels, hops)
    out = torch.log(torch.clamp(mel, min=cfg.log_floor)).transpose(1, 2)  # (B, hops, mels)
    return out.reshape(*lead, n_hops, cfg.n_mels)


@dataclass
class Clip:
    """A clip of whole frames of one recording, ready for the model."""

    index: int  # clip number within the recording
    logmel: torch.Tensor  # (hops, mels), hops a multiple of frame_hops
    silent: np.ndarray  # (frames,) bool: the frame's samples are all (digitally) zero

    @property
    def n_frames(self) -> int:
        return len(self.silent)


# Below any real recorder's noise floor (a 24-bit LSB is 1.2e-7); resampled
# digital zero stays at or below this.
SILENCE_LEVEL = 1e-6


def _make_clip(index: int, samples: np.ndarray, cfg: SpectrogramConfig) -> Clip:
    n_frames = len(samples) // cfg.frame_samples
    samples = samples[: n_frames * cfg.frame_samples]
    peak = np.abs(samples.reshape(n_frames, cfg.frame_samples)).max(axis=1)
    return Clip(index=index, logmel=log_mel(samples, cfg), silent=peak <= SILENCE_LEVEL)


def iter_clips(rec: Recording, cfg: SpectrogramConfig = SpectrogramConfig()) -> Iterator[Clip]:
    """The recording's clips in order, streamed block by block.

    The last clip may be shorter (whole frames only); a remainder shorter than
    one frame is dropped and reported by :func:`remainder_seconds`.
    """
    buffer: list[np.ndarray] = []
    buffered = 0
    index = 0
    for block in iter_blocks(rec, cfg.sample_rate):
        buffer.append(block)
        buffered += len(block)
        while buffered >= cfg.clip_samples:
            joined = np.concatenate(buffer)
            yield _make_clip(index, joined[: cfg.clip_samples], cfg)
            index += 1
            rest = joined[cfg.clip_samples :]
            buffer, buffered = [rest], len(rest)
    if buffered >= cfg.frame_samples:
        yield _make_clip(index, np.concatenate(buffer), cfg)


def frames_in(n_samples_48k: int, cfg: SpectrogramConfig = SpectrogramConfig()) -> int:
    """How many whole frames a recording of this many (target-rate) samples yields."""
    full, rest = divmod(n_samples_48k, cfg.clip_samples)
    return full * cfg.clip_frames + rest // cfg.frame_samples


def expected_frames(rec: Recording, cfg: SpectrogramConfig = SpectrogramConfig()) -> int:
    """Whole frames the header promises (the resampled length, rounded as soxr does)."""
    n = int(round(rec.n_samples * cfg.sample_rate / rec.sample_rate))
    return frames_in(n, cfg)


def remainder_seconds(rec: Recording, cfg: SpectrogramConfig = SpectrogramConfig()) -> float:
    """Audio after the last whole frame, which is not encoded."""
    return max(0.0, rec.duration_s - expected_frames(rec, cfg) * cfg.frame_seconds)
