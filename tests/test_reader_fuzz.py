"""Property test: the reader meets random bytes and cut real files without crashing or hanging."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecovae.audio import BadAudio, open_recording
from ecovae.spectrogram import iter_clips

REAL = [
    "maad_jura_diel/S4A03895_20190522_060000.wav",
    "behaviour_soundscapes/Sulawesi_Night_02.wav",
    "soundecology_puerto_rico/tropicalsound.wav",
]


def _outcome(path: Path) -> str:
    """'read' with every clip finite, or 'skipped: <reason>'; anything else raises."""

    def timeout(*_):
        raise TimeoutError(f"reader hung on {path}")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(30)
    try:
        rec = open_recording(path, path.parent)
        for clip in iter_clips(rec):
            assert clip.logmel.isfinite().all()
        return "read"
    except BadAudio as e:
        assert path.name in str(e) and e.reason
        return f"skipped: {e.reason}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(min_size=0, max_size=4096),
    prefix=st.sampled_from([b"", b"RIFF\xff\xff\x00\x00WAVEfmt ", b"fLaC", b"OggS"]),
)
def test_random_bytes_are_read_or_skipped(tmp_path, data, prefix):
    path = tmp_path / "random.wav"
    path.write_bytes(prefix + data)
    _outcome(path)


@pytest.fixture(scope="module")
def real_bytes(shared_data):
    return [(shared_data / r).read_bytes() for r in REAL]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.integers(0, len(REAL) - 1),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
)
def test_cut_and_damaged_real_files_are_read_or_skipped(tmp_path, real_bytes, which, cut, flips):
    raw = bytearray(real_bytes[which][: int(len(real_bytes[which]) * cut)])
    for pos, value in flips:  # damage the header region
        if pos < len(raw):
            raw[pos] = value
    path = tmp_path / "cut.wav"
    path.write_bytes(bytes(raw))
    _outcome(path)
