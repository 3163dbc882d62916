"""Baseline feature sets on real recordings: windows keyed like the latents, computed once and cached."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from ecovae import birdnet
from ecovae.audio import open_recording, read_audio
from ecovae.baselines import INDICES_FRAMES, acoustic_indices, baseline_windows
from ecovae.spectrogram import SpectrogramConfig

PATHS = [
    "maad_jura_diel/S4A03895_20190522_000000.wav",
    "maad_jura_diel/S4A03895_20190522_120000.wav",
    "behaviour_soundscapes/Borneo_Night_01.wav",
]


def test_indices_are_scikit_maads_names(shared_data):
    rec = open_recording(shared_data / PATHS[1], shared_data)
    idx = acoustic_indices(read_audio(rec))
    assert {"ACI", "NDSI", "BI", "ADI", "AEI", "Ht", "Hf"} <= set(idx.index)


@pytest.mark.slow
def test_indices_per_window_are_cached_and_recomputed_when_a_file_changes(shared_data, tmp_path, caplog):
    root = tmp_path / "audio"
    for p in PATHS:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / p, root / p)
    cache = tmp_path / "cache"
    first = baseline_windows(root, PATHS, "indices", cache=cache)
    spec = SpectrogramConfig()
    # 10 s Jura files: one window each; the 20 s Borneo file: windows of 15.36 s, the last shorter
    counts = first.groupby("path")["frame_offset_s"].apply(list).to_dict()
    assert counts[PATHS[0]] == [0.0] and counts[PATHS[2]] == [0.0, pytest.approx(INDICES_FRAMES * spec.frame_seconds)]
    values = first[[c for c in first.columns if c.startswith("indices_")]].to_numpy()
    assert values.shape[1] >= 50 and np.isfinite(values).all()
    assert not np.allclose(values[0], values[1])  # night and midday at the same Jura site differ
    assert (cache / "indices.parquet").is_file()

    # a second call reads the cache: the same rows, and no recomputation (a corrupt file would say)
    (root / PATHS[1]).write_bytes(b"not audio any more")
    os.utime(root / PATHS[1], ns=(0, 0))
    again = baseline_windows(root, PATHS, "indices", cache=cache)
    assert set(again["path"]) == {PATHS[0], PATHS[2]}  # the changed file was redone, and failed
    assert "skipped" in caplog.text and PATHS[1] in caplog.text
    np.testing.assert_array_equal(
        again.set_index(["path", "frame_offset_s"]).sort_index().to_numpy(),
        first[first.path != PATHS[1]].set_index(["path", "frame_offset_s"]).sort_index().to_numpy(),
    )


@pytest.mark.skipif(not birdnet.available(), reason="the birdnet extra is not installed")
def test_birdnet_embeddings_per_3_s_window(shared_data, tmp_path):
    table = baseline_windows(shared_data, PATHS, "birdnet", cache=tmp_path)
    offsets = table.groupby("path")["frame_offset_s"].apply(list).to_dict()
    assert offsets[PATHS[0]] == [0.0, 3.0, 6.0] and len(offsets[PATHS[2]]) == 6
    e = table[[c for c in table.columns if c.startswith("birdnet_")]].to_numpy()
    assert e.shape[1] == 1024 and np.isfinite(e).all()
    assert not np.allclose(e[0], e[-1])


@pytest.mark.slow
def test_indices_in_worker_processes_equal_those_in_one(shared_data):
    paths = sorted(p.relative_to(shared_data).as_posix() for p in (shared_data / "maad_jura_diel").glob("*.wav"))[:8]
    serial = baseline_windows(shared_data, paths, "indices", workers=1)
    parallel = baseline_windows(shared_data, paths, "indices", workers=2)
    assert list(parallel["path"]) == paths  # the order of the files is kept
    pd.testing.assert_frame_equal(serial, parallel)
