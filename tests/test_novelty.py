"""Unusual sounds ranked, and days at a glance: on a simulated survey with rare sounds planted in it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ecovae.diel import diel_views, write_diel
from ecovae.encode import encode
from ecovae.latents import read_latents
from ecovae.model import preset
from ecovae.novelty import event_ranks, novelty_scores, read_events, write_novelty
from ecovae.run import init_run
from ecovae.simulate import simulate_survey

FRAME_S = 1.536


@pytest.fixture(scope="module", params=[0, 1])
def planted(request, tmp_path_factory):
    """Two sites x two recorders x four times of day x two days, 12 s each; a siren and a chainsaw planted."""
    root = tmp_path_factory.mktemp(f"planted{request.param}")
    survey = simulate_survey(
        root / "survey",
        n_sites=2,
        hours=(0.0, 6.0, 12.0, 18.0),
        days=2,
        duration_s=12.0,
        seed=request.param,
        rare_events=2,
    )
    run = init_run(root / "run", preset("tiny"))  # the log-mel columns do not depend on the weights
    encode(
        survey.parent if survey.is_file() else survey, run, root / "latents.parquet", progress=False, precision="fp32"
    )
    return root, read_latents(root / "latents.parquet"), read_events(root / "survey" / "events.csv")


def _held(frames: pd.DataFrame, events: pd.DataFrame, at_least: float = FRAME_S / 2) -> np.ndarray:
    """Frames that hold at least ``at_least`` seconds (half a frame) of a planted event."""
    start = frames["frame_offset_s"].to_numpy()
    held = np.zeros(len(frames), bool)
    for e in events.itertuples():
        overlap = np.minimum(start + FRAME_S, e.end_s) - np.maximum(start, e.start_s)
        held |= (frames["path"].to_numpy() == e.path) & (overlap >= at_least)
    return held


def test_planted_events_rank_first(planted):
    root, frames, events = planted
    assert sorted(events["kind"]) == ["chainsaw", "siren"]
    scores = novelty_scores(frames, "logmel")
    held = _held(scores, events)
    assert held.sum() >= 2 * len(events)  # 3-5 s events: at least two frames each
    touched = _held(scores, events, at_least=1e-9)
    for r in event_ranks(scores, events, FRAME_S):
        # before each event's first frame in the ranking, only the other event's frames and at most two
        # ordinary ones (measured over five seeds: 0 to 1 ordinary frame before the siren, none before the chainsaw)
        ordinary_before = (~touched & (scores["rank"] < r["best_rank"]["novelty_logmel"])).sum()
        assert ordinary_before == r["ordinary_before"]["novelty_logmel"] <= 2, r
    # and the frames that hold them are the rarest ones: ranked in the first tenth, every one
    assert scores.loc[held, "rank"].max() <= len(frames) / 10


def test_novelty_outputs_are_keyed_like_the_latents(planted, tmp_path):
    root, frames, events = planted
    scores = novelty_scores(frames, ("logmel", "vae"), neg_elbo=np.arange(len(frames), dtype=float))
    summary = write_novelty(scores, tmp_path, top=5, events=events, frame_seconds=FRAME_S)
    back = pd.read_parquet(tmp_path / "novelty.parquet")
    assert list(back[["path", "frame_in_recording"]].itertuples(index=False)) == list(
        frames[["path", "frame_in_recording"]].itertuples(index=False)
    )
    assert not any(c.startswith(("mu_", "logvar_", "logmel_")) for c in back.columns)
    assert pd.read_csv(tmp_path / "novelty_top.csv")["rank"].tolist() == [1, 2, 3, 4, 5]
    assert summary["ranked_by"] == "novelty_logmel" and summary["scores"] == [
        "novelty_logmel",
        "novelty_vae",
        "neg_elbo",
    ]
    assert json.loads((tmp_path / "novelty.json").read_text())["events"][0]["frames"] >= 2


def test_silent_frames_are_not_ranked(planted):
    _, frames, _ = planted
    frames = frames.copy()
    frames.loc[frames.index[:3], "silent"] = True
    scores = novelty_scores(frames, "logmel")
    assert scores["rank"].iloc[:3].isna().all() and scores["rank"].max() == len(frames) - 3
    with pytest.raises(ValueError, match="features must be among"):
        novelty_scores(frames, "birdsong")


def test_diel_view_has_a_row_per_day_and_one_colour_scale(planted, tmp_path):
    _, frames, _ = planted
    views, settings = diel_views(frames, by="site", bin_minutes=60)
    assert [v.group for v in views] == sorted(frames["site"].unique())
    for v in views:
        assert len(v.days) == 2 and v.image.shape == (2, 24, 3)
        recorded = ~np.isnan(v.image[..., 0])
        # the recorded hours are coloured, the others empty; colours within the fixed scale
        assert set(np.flatnonzero(recorded.any(0))) == {0, 6, 12, 18}
        assert np.nanmin(v.image) >= 0 and np.nanmax(v.image) <= 1
        assert v.profile["hours"] == [0.0, 6.0, 12.0, 18.0] and len(v.profile["median"]) == 3
    summary = write_diel(views, settings, tmp_path)
    assert all((tmp_path / v["image"]).stat().st_size > 0 for v in summary["views"])
    with pytest.raises(ValueError, match="no label column 'habitat_x'"):
        diel_views(frames, by="habitat_x")


def test_novelty_and_diel_from_the_command_line(planted, tmp_path):
    from typer.testing import CliRunner

    from ecovae.cli import app

    root, frames, events = planted
    runner = CliRunner()
    args = ["novelty", str(root / "latents.parquet"), "--model", str(root / "run"), "--out", str(tmp_path / "nov")]
    result = runner.invoke(app, [*args, "--recordings", str(root / "survey"), "--top", "5", "--elbo"])
    assert result.exit_code == 0, result.output
    assert "known event siren" in result.output and "known event chainsaw" in result.output
    summary = json.loads((tmp_path / "nov" / "novelty.json").read_text())
    assert summary["scores"] == ["novelty_logmel", "novelty_vae", "neg_elbo"] and len(summary["listen"]) == 5
    assert all((tmp_path / "nov" / e["audio"]).stat().st_size > 0 for e in summary["listen"])
    # five moments to hear, no two excerpts of one recording overlapping; both planted sounds among them
    listen = summary["listen"]
    assert all(
        a["path"] != b["path"] or a["end_s"] <= b["start_s"] or b["end_s"] <= a["start_s"]
        for i, a in enumerate(listen)
        for b in listen[i + 1 :]
    )
    assert set(events["path"]) <= {e["path"] for e in listen}
    assert np.isfinite(pd.read_parquet(tmp_path / "nov" / "novelty.parquet")["neg_elbo"]).all()
    missing = runner.invoke(app, ["novelty", str(root / "latents.parquet"), "--out", str(tmp_path / "x"), "--elbo"])
    assert missing.exit_code == 2 and "--elbo needs --model" in missing.output
    result = runner.invoke(app, ["plot", "diel", str(root / "latents.parquet"), "--out", str(tmp_path / "diel")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "diel").glob("*.png")) == [
        f"diel_{s}.png" for s in sorted(frames["site"].unique())
    ]


@pytest.mark.parametrize("reference_frames", [50_000, 200])
def test_a_small_cluster_of_rare_frames_is_still_rare(monkeypatch, reference_frames):
    """Three near-identical odd frames among 600 ordinary ones in two broad clusters: a mixture can give them a
    component of their own; the 16th neighbour cannot be among them. Also when neighbours are searched in a
    sample of the frames (large surveys)."""
    import ecovae.novelty as novelty

    monkeypatch.setattr(novelty, "REFERENCE_FRAMES", reference_frames)
    rng = np.random.default_rng(0)
    ordinary = np.r_[rng.normal(0, 1, (300, 8)), rng.normal(6, 1, (300, 8))]
    odd = rng.normal(0, 0.01, (3, 8)) + np.r_[3.0, -9.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    scores = novelty.knn_novelty(np.r_[ordinary, odd])
    assert sorted(np.argsort(-scores)[:3]) == [600, 601, 602]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_many_features_a_little_outrank_one_feature_a_lot(seed):
    """A siren's sweep lifts many bands a little; a bird singing at the microphone lifts one band a lot, and a
    dawn chorus repeats it. With standardised features soft-clipped, the sweep ranks first; unclipped, one
    heavy-tailed feature decides the distance and the loud songs rank first."""
    import ecovae.novelty as novelty

    rng = np.random.default_rng(seed)
    ordinary = rng.normal(0, 1, (600, 32))
    loud = rng.normal(0, 1, (30, 32))
    loud[np.arange(30), np.repeat(np.arange(10), 3)] += 40.0  # ten kinds of loud song, three frames each
    broad = rng.normal(0, 0.3, (3, 32))
    broad[:, 16:28] += 3.0  # one odd sound, twelve features a little raised
    x = np.r_[ordinary, loud, broad]
    clipped = np.argsort(-novelty.knn_novelty(x))
    assert sorted(clipped[:3]) == [630, 631, 632]
    unclipped = np.argsort(-novelty.knn_novelty(x, clip_sd=None))
    assert set(unclipped[:3]) <= set(range(600, 630)), "the scene no longer shows what the clip is for"


def test_negative_elbo_is_kept_per_recording_and_computed_again_only_where_needed(planted, tmp_path, monkeypatch):
    """The decoder pass costs what encoding did: run again, it reads no audio; a changed file is read again,
    alone; other weights reuse nothing."""
    import os
    import shutil

    import torch

    import ecovae.novelty as novelty
    from ecovae.run import load_model

    root, frames, _ = planted
    paths = sorted(frames["path"].unique())[:3]
    for p in paths:
        (tmp_path / "rec" / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / "survey" / p, tmp_path / "rec" / p)
    frames = frames[frames["path"].isin(paths)].reset_index(drop=True)
    model, spec = load_model(root / "run")
    read, real = [], novelty.recording_clips
    monkeypatch.setattr(novelty, "recording_clips", lambda rec, spec: read.append(rec.relpath) or real(rec, spec))
    cache = tmp_path / "nov" / novelty.ELBO_CACHE_FILE

    def elbo():
        read.clear()
        return novelty.neg_elbo_per_frame(model, spec, tmp_path / "rec", frames=frames, cache=cache)

    first = elbo()
    assert sorted(read) == paths and np.isfinite(first).all()
    assert np.array_equal(elbo(), first) and read == []
    st = (tmp_path / "rec" / paths[1]).stat()
    os.utime(tmp_path / "rec" / paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert np.array_equal(elbo(), first) and read == [paths[1]]
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    elbo()
    assert sorted(read) == paths
