"""The map of a survey's sounds: one 2-D point per frame, computed once and recomputed only when the latents change."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecovae import latent_map as maps
from ecovae.encode import encode
from ecovae.latents import read_latents
from ecovae.simulate import simulate_survey


@pytest.fixture()
def latents(tmp_path, untrained_run):
    folder = tmp_path / "survey"
    simulate_survey(folder, n_sites=2, recorders_per_site=1, hours=(0.0, 12.0), duration_s=6.0, seed=4)
    out = tmp_path / "latents"  # a dataset folder: it grows as files are added
    encode(folder, untrained_run, out, progress=False, precision="fp32")
    return folder, out


def test_the_map_has_a_point_per_frame_and_is_kept_until_the_latents_change(latents, untrained_run, monkeypatch):
    folder, out = latents
    frames = read_latents(out)
    first = maps.latent_map(out, method="pca")
    assert len(first) == len(frames) and np.isfinite(first[["x", "y"]].to_numpy()).all()
    pd.testing.assert_frame_equal(first[["path", "frame_in_recording"]], frames[["path", "frame_in_recording"]])
    assert first[["x", "y"]].std().gt(0).all()  # the frames are spread, not one point

    def never(*a, **k):
        raise AssertionError("projected again although the latents did not change")

    real = maps.project
    monkeypatch.setattr(maps, "project", never)
    pd.testing.assert_frame_equal(maps.latent_map(out, method="pca"), first)  # read back, not recomputed
    with pytest.raises(AssertionError, match="projected again"):
        maps.latent_map(out, method="pca", seed=1)  # another seed is another map

    simulate_survey(folder / "more", n_sites=1, recorders_per_site=1, hours=(6.0,), duration_s=6.0, seed=5)
    encode(folder, untrained_run, out, progress=False, precision="fp32")  # new files appended
    monkeypatch.setattr(maps, "project", real)
    grown = maps.latent_map(out, method="pca")
    assert len(grown) == len(read_latents(out)) > len(first)


def test_umap_places_every_frame_and_a_bad_method_is_refused(latents):
    _, out = latents
    m = maps.latent_map(out, method="umap")
    assert len(m) == len(read_latents(out)) and np.isfinite(m[["x", "y"]].to_numpy()).all()
    with pytest.raises(ValueError, match="umap"):
        maps.latent_map(out, method="tsne")
