"""Encoding to Parquet: schema, one row per frame, bad inputs, and resuming after a kill."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from ecovae.encode import encode
from ecovae.latents import latents_schema

from .conftest import write_tone

FRAME_S = 192 * 384 / 48_000  # 1.536 s
CLIP_S = 39 * FRAME_S


def frames_for(duration_s: float) -> int:
    """docs/model.md: whole clips of 39 frames, then a shorter clip of whole frames."""
    full = math.floor(duration_s / CLIP_S + 1e-9)
    return full * 39 + math.floor((duration_s - full * CLIP_S) / FRAME_S + 1e-9)


@pytest.mark.slow
def test_one_row_per_frame_of_every_real_file(shared_data, manifest, untrained_run, tmp_path):
    out = tmp_path / "latents.parquet"
    summary = encode(shared_data, untrained_run, out, labels_csv=shared_data / "MANIFEST.csv", progress=False)
    assert summary.skipped == {} and summary.encoded == len(manifest)

    table = pq.read_table(out)
    labels = [c for c in manifest.columns if c != "path"]
    assert table.schema.names[: 1 + len(labels)] == ["path", *labels]
    # labels keep their types: numbers are numbers, times with an offset are instants (UTC), the rest text
    types = {f.name: f.type for f in table.schema}
    assert types["duration_s"] == pa.float64() and types["sample_rate"] == pa.int64()
    assert types["recorded_at"] == pa.timestamp("ms", tz="UTC")
    assert types["site_or_habitat"] == types["license"] == pa.string()
    assert table.schema.equals(latents_schema(labels, 16, types={c: types[c] for c in labels}), check_metadata=False)
    df = pd.read_parquet(out)  # what a user does
    counts = df.groupby("path").size()
    expected = manifest.set_index("path")["duration_s"].map(frames_for)
    pd.testing.assert_series_equal(counts.sort_index(), expected.sort_index(), check_names=False)
    assert not df.duplicated(["path", "clip_index", "frame_index"]).any()
    # frames numbered 0..n-1 in each file, offsets 1.536 s apart
    for _, g in df.groupby("path"):
        assert g["frame_in_recording"].tolist() == list(range(len(g)))
        np.testing.assert_allclose(np.diff(g["frame_offset_s"]), FRAME_S)
    jura = df[df.path == "maad_jura_diel/S4A03895_20190522_061500.wav"]
    assert (jura["start_time"] == pd.Timestamp("2019-05-22 06:15:00")).all()
    assert jura["frame_time"].iloc[1] == pd.Timestamp("2019-05-22 06:15:01.536")
    assert (jura["site_or_habitat"] == "FR-Jura").all() and (jura["source_sample_rate"] == 22_000).all()
    assert (jura["recorded_at"] == pd.Timestamp("2019-05-22T06:15:00+02:00")).all()  # the same instant, in UTC
    assert (df[df.duration_s > 59].groupby("path").size() > 0).all() and df.sample_rate.dtype == np.int64
    mu = df.filter(like="mu_").to_numpy()
    assert mu.shape[1] == 16 and np.isfinite(mu).all() and mu.std(0).min() > 0


def test_bad_inputs_beside_good_ones(shared_data, untrained_run, tmp_path):
    root = tmp_path / "survey"
    good = sorted((shared_data / "behaviour_soundscapes").glob("*.wav"))[:2]
    (root / "good").mkdir(parents=True)
    for p in good:
        shutil.copy(p, root / "good" / p.name)
    bad = root / "bad"
    bad.mkdir()
    (bad / "zero.wav").write_bytes(b"")
    (bad / "text.wav").write_text("field notes, not audio\n" * 100)
    real = (good[0]).read_bytes()
    (bad / "header_cut.wav").write_bytes(real[:30])  # truncated inside the header
    (bad / "data_cut.wav").write_bytes(real[: len(real) // 3])  # header promises more than is there
    nan = np.full(48_000 * 4, np.nan, dtype=np.float32)
    sf.write(bad / "nan.wav", nan, 48_000, subtype="FLOAT")
    inf = np.zeros(48_000 * 4, dtype=np.float32)
    inf[1000] = np.inf
    sf.write(bad / "inf.wav", inf, 48_000, subtype="FLOAT")
    sf.write(bad / "silence.wav", np.zeros(48_000 * 4, dtype=np.int16), 48_000, subtype="PCM_16")
    write_tone(bad / "one_second.wav", 1.0)
    write_tone(bad / "low_rate.wav", 4.0, sr=8_000)
    write_tone(bad / "stereo.wav", 4.0, channels=2)
    write_tone(bad / "pcm24.wav", 4.0, subtype="PCM_24")
    write_tone(bad / "float.wav", 4.0, subtype="FLOAT")

    out = tmp_path / "latents.parquet"
    summary = encode(root, untrained_run, out, progress=False)
    df = pd.read_parquet(out)
    counts = df.groupby("path").size().to_dict()

    for p in good:  # every good file, completely
        assert counts[f"good/{p.name}"] == frames_for(20.0)
    for name in ["low_rate", "stereo", "pcm24", "float"]:
        assert counts[f"bad/{name}.wav"] == 2  # 4 s -> 2 whole frames
    assert counts["bad/silence.wav"] == 2
    assert df[df.path == "bad/silence.wav"]["silent"].all()
    assert not df[df.path.str.startswith("good/")]["silent"].any()
    assert "bad/silence.wav" in summary.silent_files
    assert summary.skipped.keys() == {
        "bad/zero.wav",
        "bad/text.wav",
        "bad/header_cut.wav",
        "bad/nan.wav",
        "bad/inf.wav",
        "bad/one_second.wav",
    }
    assert "empty" in summary.skipped["bad/zero.wav"]
    assert "not readable" in summary.skipped["bad/text.wav"]
    assert "non-finite" in summary.skipped["bad/nan.wav"] and "non-finite" in summary.skipped["bad/inf.wav"]
    assert "shorter than one frame" in summary.skipped["bad/one_second.wav"]
    # the file cut in its data is encoded as far as it goes, and flagged
    assert 0 < counts.get("bad/data_cut.wav", 0) < frames_for(20.0)
    assert "bad/data_cut.wav" in summary.truncated_files
    assert summary.encoded == len(counts) == 8  # 2 good + 6 odd but readable
    assert summary.flagged == 2
    np.testing.assert_array_equal(np.isfinite(df.filter(like="mu_").to_numpy()), True)


def _make_survey(root: Path, n: int) -> None:
    for i in range(n):
        write_tone(
            root / f"site{i % 3}" / f"2024050{1 + i % 5}_0{i % 10}0000.WAV",
            6.0 + i % 4,
            freq=500 + 300 * i,
            seed=i,
        )


@pytest.mark.slow
def test_killed_encoding_resumes_to_the_same_rows(untrained_run, tmp_path):
    root = tmp_path / "survey"
    _make_survey(root, 24)
    reference = tmp_path / "reference.parquet"
    encode(root, untrained_run, reference, progress=False)

    out = tmp_path / "latents.parquet"
    partial = out.with_name(out.name + ".partial")
    code = (
        "import sys; from ecovae.encode import encode; "
        f"encode({str(root)!r}, {str(untrained_run)!r}, {str(out)!r}, rows_per_part=4, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    while time.time() < deadline and len(list(partial.glob("part-*.parquet"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run finished before it could be killed"
    done_before = len(list(partial.glob("part-*.parquet")))
    assert done_before >= 3

    summary = encode(root, untrained_run, out, rows_per_part=4, progress=False)
    assert summary.already_done > 0 and summary.already_done + summary.encoded == 24
    assert not partial.exists()
    a = pd.read_parquet(reference).sort_values(["path", "frame_in_recording"]).reset_index(drop=True)
    b = pd.read_parquet(out).sort_values(["path", "frame_in_recording"]).reset_index(drop=True)
    assert len(b) == len(a) and not b.duplicated(["path", "frame_in_recording"]).any()
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-5, rtol=1e-4)

    # A later run over the same folder has nothing to do; a new file is appended.
    again = encode(root, untrained_run, out, progress=False)
    assert (again.encoded, again.already_done) == (0, 24)
    write_tone(root / "site9" / "20240601_000000.WAV", 3.1, seed=99)
    more = encode(root, untrained_run, out, progress=False)
    assert (more.encoded, more.already_done) == (1, 24)
    assert len(pd.read_parquet(out)) == len(a) + 2


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["path", "frame_in_recording"]).reset_index(drop=True)


def test_dataset_output_with_workers_equals_single_file_and_resumes_from_its_index(untrained_run, tmp_path):
    from ecovae.latents import read_latents
    from ecovae.model import preset
    from ecovae.run import init_run

    root = tmp_path / "survey"
    _make_survey(root, 12)
    single = tmp_path / "single.parquet"
    encode(root, untrained_run, single, workers=0, progress=False)

    # A folder output, decoded in 2 worker processes, small parts: the same rows, read as one table.
    folder = tmp_path / "latents"
    s = encode(root, untrained_run, folder, workers=2, rows_per_part=10, progress=False)
    assert (s.encoded, s.already_done, len(s.skipped)) == (12, 0, 0)
    parts = sorted(folder.glob("part-*.parquet"))
    assert len(parts) > 2 and not list(folder.glob("*.tmp"))
    a, b = _sorted(pd.read_parquet(single)), _sorted(pd.read_parquet(folder))
    assert not b.duplicated(["path", "frame_in_recording"]).any()
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-5, rtol=1e-4)
    pd.testing.assert_frame_equal(a, _sorted(read_latents(folder)), check_exact=False, atol=1e-5, rtol=1e-4)
    assert pq.read_table(folder).schema.equals(pq.read_schema(single))

    # Resuming reads the parts' index, not the audio: files already done are never opened
    # again (here they are no longer audio at all), and only the new file is encoded.
    for wav in root.rglob("*.WAV"):  # same size and mtime: the quick check cannot tell
        st = wav.stat()
        wav.write_bytes(b"not audio any more".ljust(st.st_size, b"!"))
        os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns))
    write_tone(root / "site9" / "20240601_000000.WAV", 5.0, seed=99)
    again = encode(root, untrained_run, folder, progress=False)
    assert (again.encoded, again.already_done, again.skipped) == (1, 12, {})
    assert len(pd.read_parquet(folder)) == len(a) + frames_for(5.0)

    # Another model's latents never mix with these.
    other = init_run(tmp_path / "other_run", preset("tiny", latent_dim=8))
    write_tone(root / "site9" / "20240602_000000.WAV", 5.0, seed=98)
    try:
        encode(root, other, folder, progress=False)
    except RuntimeError as e:
        assert "another" in str(e)
    else:
        raise AssertionError("encoding with another model into the same output was not refused")
    same_shape = init_run(tmp_path / "reseeded_run", preset("tiny"), seed=7)
    try:
        encode(root, same_shape, single, progress=False)
    except RuntimeError as e:
        assert "another model" in str(e) and str(single) in str(e)
    else:
        raise AssertionError("a differently initialised model's latents were mixed into the output")
