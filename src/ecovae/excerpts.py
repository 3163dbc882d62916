"""Excerpts to listen to: a frame of a recording with 1.5 s either side, as Ogg Vorbis beside its spectrogram.

Written for the exemplars of each class (:mod:`ecovae.interpret`) and the survey's most unusual moments
(:mod:`ecovae.novelty`), read from the original recordings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ecovae import plots
from ecovae.audio import open_recording, read_excerpt

log = logging.getLogger(__name__)

EXCERPT_RATE = 24_000  # Hz: the mels end at 15 kHz, and 24 kHz keeps everything below 12 kHz; small to embed
CONTEXT_S = 1.5  # seconds either side of the frame: a frame alone is too short to recognise a sound


def context_span(offset_s: float, frame_s: float) -> tuple[float, float]:
    """Where a frame's excerpt starts (CONTEXT_S before the frame, not before the file) and how long it is."""
    start = max(0.0, offset_s - CONTEXT_S)
    return start, offset_s + frame_s + CONTEXT_S - start


def write_excerpt(root: Path, path: str, *, offset_s: float, frame_s: float, out: Path, name: str) -> dict:
    """The frame at ``offset_s`` of ``path`` with CONTEXT_S either side, as Ogg Vorbis (peak-normalised, the gain
    recorded) and its spectrogram with the frame marked: ``out/<name>.ogg`` and ``.jpg`` (``name`` may hold a
    subfolder; the returned file names are relative to ``out``). Raises BadAudio if the file cannot be read now."""
    import soundfile as sf

    (out / name).parent.mkdir(parents=True, exist_ok=True)
    rec = open_recording(root / path, root)
    start, seconds = context_span(offset_s, frame_s)
    audio = read_excerpt(rec, start, seconds, rate=EXCERPT_RATE)
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    gain = 0.9 / peak if peak > 0 else 1.0
    sf.write(out / f"{name}.ogg", audio * gain, EXCERPT_RATE, format="OGG", subtype="VORBIS")
    plots.excerpt(
        audio,
        EXCERPT_RATE,
        (offset_s - start, offset_s - start + frame_s),
        title=f"{path} @ {offset_s:.1f} s",
        path=out / f"{name}.jpg",
    )
    return {
        "path": path,
        "frame_offset_s": float(offset_s),
        "start_s": start,
        "end_s": start + len(audio) / EXCERPT_RATE,
        "gain_db": float(20 * np.log10(gain)),
        "audio": f"{name}.ogg",
        "image": f"{name}.jpg",
    }


def write_excerpts(root: Path, wanted: list[tuple[str, str, float, dict]], *, frame_s: float, out: Path) -> list[dict]:
    """Each (name, path, frame offset, extra fields) wanted as an excerpt (:func:`write_excerpt`), with the extra
    fields added. A file gone or broken since encoding is logged and left out; the others are still written."""
    rows = []
    for name, path, offset_s, extra in wanted:
        try:
            rows.append(
                {**extra, **write_excerpt(root, path, offset_s=float(offset_s), frame_s=frame_s, out=out, name=name)}
            )
        except Exception as e:
            log.warning("excerpt left out: %s", e)
    return rows
