"""Shared by the benchmarks: real audio tiled to length, an untrained run folder, results files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ecovae.audio import find_audio_files, open_recording, read_audio
from ecovae.host import hardware_info, package_versions

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ECOVAE_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results"


def real_audio(seconds_wanted: float = 600.0) -> np.ndarray:
    """Real field audio from ../shared/data at 48 kHz, concatenated (up to what is asked, or all of it)."""
    parts, total = [], 0
    for path in find_audio_files(SHARED_DATA):
        a = read_audio(open_recording(path, SHARED_DATA))
        parts.append(a)
        total += len(a)
        if total >= seconds_wanted * 48_000:
            break
    return np.concatenate(parts)


def tiled_file(folder: Path, seconds: float) -> Path:
    """A 48 kHz 16-bit WAV of real audio tiled to ``seconds``, written in blocks (cached by length)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tiled_{int(seconds)}s.wav"
    if path.is_file():
        return path
    source = real_audio(min(seconds, 1400.0))
    n = int(seconds * 48_000)
    with sf.SoundFile(path, "w", samplerate=48_000, channels=1, subtype="PCM_16") as f:
        written = 0
        while written < n:
            chunk = source[: n - written]
            f.write(chunk)
            written += len(chunk)
    return path


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def result_name(base: str, smoke: bool, device: str = "cpu") -> str:
    """``base``, ``base_smoke``, ``base_cuda0``...: a smoke run or another device never overwrites the figures."""
    return base + ("_smoke" if smoke else "") + ("" if device == "cpu" else "_" + device.replace(":", ""))


def write_results(name: str, payload: dict, out: Path | None = None) -> Path:
    """Print and save ``bench/results/<name>.json`` with the machine and versions beside the figures."""
    out = out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "hardware": hardware_info(),
        "versions": package_versions(),
        **payload,
    }
    out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"\nwritten: {out}")
    return out


def table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
