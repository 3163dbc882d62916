"""Baseline feature sets on the real recordings: one finite row per recording."""

from __future__ import annotations

import numpy as np
import pytest

from ecovae import birdnet
from ecovae.audio import open_recording
from ecovae.baselines import acoustic_indices, baseline_features

PATHS = [
    "maad_jura_diel/S4A03895_20190522_000000.wav",
    "maad_jura_diel/S4A03895_20190522_120000.wav",
    "behaviour_soundscapes/Borneo_Night_01.wav",
    "maad_colombia/spinetail.wav",
    "soundecology_puerto_rico/tropicalsound.wav",
]


@pytest.mark.slow
def test_indices_and_mean_logmel_on_real_files(shared_data):
    feats = baseline_features(shared_data, PATHS, kinds=("indices", "logmel"))
    assert feats["logmel"].shape == (len(PATHS), 64)
    assert feats["indices"].shape[0] == len(PATHS) and feats["indices"].shape[1] >= 50
    for x in feats.values():
        assert np.isfinite(x).all()
    # night and midday at the same Jura site differ in their indices and spectra
    assert not np.allclose(feats["indices"][0], feats["indices"][1])
    assert np.abs(feats["logmel"][0] - feats["logmel"][1]).max() > 0.5


def test_indices_are_scikit_maads_names(shared_data):
    rec = open_recording(shared_data / PATHS[1], shared_data)
    idx = acoustic_indices(rec)
    assert {"ACI", "NDSI", "BI", "ADI", "AEI", "Ht", "Hf"} <= set(idx.index)


@pytest.mark.skipif(not birdnet.available(), reason="the birdnet extra is not installed")
def test_birdnet_embeddings_on_real_files(shared_data):
    feats = baseline_features(shared_data, PATHS[:3], kinds=("birdnet",))
    assert feats["birdnet"].shape == (3, 1024) and np.isfinite(feats["birdnet"]).all()
    assert not np.allclose(feats["birdnet"][0], feats["birdnet"][2])
