"""After training: descriptors, grouped classification, hardware correction, interpretation and the report."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline

from ecovae.descriptors import (
    MixtureMoments,
    MixtureSampleClassifier,
    TimeAveraged,
    Units,
    describe,
    group_units,
    sample_mixture,
)
from ecovae.encode import encode
from ecovae.evaluate import evaluate_descriptors, make_folds, write_evaluation
from ecovae.hardware import hardware_check
from ecovae.interpret import boundary_walk, first_clip, fit_linear, saliency_maps
from ecovae.latents import read_latents
from ecovae.recorder_offsets import RecorderOffsets, spectra_table
from ecovae.report import write_report
from ecovae.run import load_model
from ecovae.simulate import RecorderModel, simulate_survey


def test_mixture_moments_match_samples_from_the_mixture():
    rng = np.random.default_rng(0)
    mu = np.r_[rng.normal(-2, 0.3, (50, 3)), rng.normal(3, 0.3, (30, 3))].astype(np.float32)
    logvar = np.full_like(mu, np.log(0.5))
    rec = np.concatenate([mu, logvar], 1)
    moments = MixtureMoments().fit_transform([rec])[0]
    draws = sample_mixture(rec, 200_000, rng)
    np.testing.assert_allclose(moments[:3], draws.mean(0), atol=0.03)
    np.testing.assert_allclose(moments[3:], draws.var(0), rtol=0.02)
    np.testing.assert_allclose(TimeAveraged().fit_transform([rec])[0], mu.mean(0), rtol=1e-6)


def _designed_sites(n_per_site: int = 12, frames: int = 40, dim: int = 4, seed: int = 0) -> Units:
    """Two sites with the same time-averaged latent: at A a source is on in alternate frames
    (periodic, bimodal), at B it is always half on. Only the mixture sees the difference."""
    rng = np.random.default_rng(seed)
    recs, rows = [], []
    for site in ("A", "B"):
        for i in range(n_per_site):
            level = np.tile([0.0, 2.0], frames // 2) if site == "A" else np.full(frames, 1.0)
            mu = rng.normal(0, 0.15, (frames, dim)).astype(np.float32)
            mu[:, 0] += level + rng.normal(0, 0.2)  # recording-level jitter of the mean
            logvar = np.full((frames, dim), np.log(0.05), np.float32)
            recs.append(np.concatenate([mu, logvar], 1))
            rows.append({"unit": f"{site}/{i}.wav", "site": site})
    return Units(recs, pd.DataFrame(rows), dim)


def test_mixture_separates_sites_that_differ_only_in_temporal_structure():
    recs = _designed_sites()
    ev = evaluate_descriptors(recs, "site", kinds=("mean", "moments", "mixture"), seed=0)
    acc = ev.summary.set_index(["descriptor", "classifier"])["balanced_accuracy"]
    assert acc["mean"].max() < 0.75  # time-averaged: indistinguishable to either classifier
    assert acc[("moments", "logreg")] > 0.85 and acc[("moments", "rf")] > 0.9
    # Samples of a bimodal vs a unimodal mixture: a forest separates them; a linear rule on one sample cannot.
    assert acc[("mixture", "rf")] > 0.9


def test_descriptors_compose_with_sklearn():
    recs = _designed_sites(n_per_site=8)
    y = recs.meta["site"].to_numpy()
    pipe = make_pipeline(MixtureMoments(), LogisticRegression(max_iter=2000))
    assert cross_val_score(pipe, recs.frames, y, cv=4).mean() > 0.9
    clf = MixtureSampleClassifier(LogisticRegression(max_iter=2000), n_samples=16).fit(recs.frames, y)
    proba = clf.predict_proba(recs.frames)
    assert proba.shape == (16, 2) and np.allclose(proba.sum(1), 1)
    table = describe(recs, "mixture", n_samples=5)
    assert len(table) == 16 * 5 and {"site", "sample", "z_000"} <= set(table.columns)


def test_folds_never_split_a_group():
    meta = pd.DataFrame(
        {
            "path": [f"{i}.wav" for i in range(40)],
            "site": ["a", "b"] * 20,
            "recorder": [f"r{i // 4}" for i in range(40)],
        }
    )
    folds, keep = make_folds(meta, "site", "recorder", n_splits=5)
    for tr, te in folds.splits:
        assert set(folds.groups[tr]).isdisjoint(folds.groups[te])


def test_site_classification_on_a_simulated_survey(simulated, tmp_path):
    """What the written evaluation must say whatever the model learned (and whatever the CPU's
    floating-point path): every file agrees with the predictions, and the scores are the
    scores of those predictions. How well a model separates sites is the benchmark's business."""
    from sklearn.metrics import balanced_accuracy_score

    _, _, latents = simulated
    recs = group_units(read_latents(latents))
    ev = evaluate_descriptors(recs, "site", seed=0)
    write_evaluation(ev, tmp_path, latents)
    assert ev.n_recordings == 48 and ev.classes == ["site1", "site2", "site3", "site4"]
    assert ev.chance["balanced_accuracy"] == 0.25
    predictions = pd.read_parquet(tmp_path / "predictions.parquet")
    metrics = pd.read_csv(tmp_path / "metrics.csv").set_index(["features", "descriptor", "classifier"])
    per_class = pd.read_csv(tmp_path / "per_class.csv")
    assert set(per_class["class"]) == set(ev.classes)
    for (feats, kind, clf), group in predictions.groupby(["features", "descriptor", "classifier"]):
        assert len(group) == 48 and set(group["unit"]) == set(recs.meta["path"])
        # every recording is tested exactly once, in a fold that holds none of its training data
        assert group["fold"].nunique() == ev.n_folds
        probabilities = group[[f"p_{c}" for c in ev.classes]].to_numpy()
        np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-6)
        assert (np.array(ev.classes)[probabilities.argmax(1)] == group["predicted"]).all()
        score = balanced_accuracy_score(group["true"], group["predicted"])
        assert metrics.loc[(feats, kind, clf), "balanced_accuracy"] == pytest.approx(score)
        rows = per_class[(per_class.features == feats) & (per_class.descriptor == kind) & (per_class.classifier == clf)]
        assert rows["recall"].mean() == pytest.approx(score)
        counts = pd.read_csv(tmp_path / f"confusion_{feats}_{kind}_{clf}.csv", index_col=0)
        assert list(counts.index) == ev.classes and counts.to_numpy().sum() == 48
        expected = pd.crosstab(group["true"], group["predicted"]).reindex(
            index=ev.classes, columns=ev.classes, fill_value=0
        )
        np.testing.assert_array_equal(counts.to_numpy(), expected.to_numpy())
    info = json.loads((tmp_path / "evaluation.json").read_text())
    best = metrics["balanced_accuracy"].idxmax()
    assert (info["best"]["features"], info["best"]["descriptor"], info["best"]["classifier"]) == best
    assert (tmp_path / info["confusion_images"][f"{best[0]} {best[1]} / {best[2]}"]).stat().st_size > 1000


def test_day_vs_night_on_the_jura_series(shared_data, shared_run, tmp_path):
    run, _ = shared_run
    latents = tmp_path / "latents.parquet"
    encode(shared_data, run, latents, labels_csv=shared_data / "MANIFEST.csv", progress=False)
    frames = read_latents(latents)
    jura = group_units(frames[frames["path"].str.startswith("maad_jura_diel/")])
    assert len(jura.meta) == 96
    ev = evaluate_descriptors(jura, "day_night", seed=0)
    best = ev.summary["balanced_accuracy"].max()
    assert best > 0.7, ev.summary
    assert ev.summary.set_index(["descriptor", "classifier"]).loc[("moments", "logreg"), "roc_auc"] > 0.75


@pytest.fixture(scope="module")
def hardware_survey(tmp_path_factory):
    """Two recorder models far apart in response, one of each at every site, recording around midday
    (so that the soundscape varies less than the hardware does)."""
    out = tmp_path_factory.mktemp("hardware_survey")
    models = (
        RecorderModel("bright", 100, 3000, 10.0, lowpass_hz=20000, noise_dbfs=-90),
        RecorderModel("dull", 400, 3000, -10.0, lowpass_hz=4000, noise_dbfs=-90),
    )
    simulate_survey(
        out,
        n_sites=4,
        recorders_per_site=2,
        hours=(10.0, 11.0, 12.0, 13.0),
        duration_s=8.0,
        seed=1,
        recorder_models=models,
    )
    return out


def test_hardware_correction_lowers_recorder_predictability(untrained_run, hardware_survey):
    model, spec = load_model(untrained_run)
    result = hardware_check(model, spec, hardware_survey, recorder="recorder_model", target="site", seed=0)
    acc = result["recorder_balanced_accuracy"]
    assert acc["without"] > 0.85
    assert acc["with"] < acc["without"] - 0.25
    assert set(result["offsets"]) == {"bright", "dull"}


def test_recorder_offsets_are_fitted_on_what_they_are_given():
    rng = np.random.default_rng(0)
    spectra = rng.normal(0, 0.1, (20, 8)) + np.r_[np.ones((10, 1)), -np.ones((10, 1))]
    recorders = ["a"] * 10 + ["b"] * 10
    corr = RecorderOffsets().fit(spectra_table(spectra, recorders))
    np.testing.assert_allclose(corr.offset("a"), 1.0, atol=0.1)
    fixed = corr.transform(spectra_table(spectra, recorders))
    assert abs(fixed[:10].mean() - fixed[10:].mean()) < 0.05
    assert np.all(corr.offset("unknown") == 0)


def test_saliency_and_boundary_walk(simulated):
    survey, run, latents = simulated
    model, spec = load_model(run)
    recs = group_units(read_latents(latents))
    z = TimeAveraged().fit_transform(recs.frames)
    y = recs.meta["site"].astype(str).to_numpy()
    x = first_clip(survey / recs.meta["path"][0], survey, spec, max_frames=4)
    maps = saliency_maps(model, x, fit_linear(z, y, "site2"), ig_steps=8)
    for m in maps.values():
        assert m.shape == tuple(x.shape) and np.isfinite(m).all() and np.abs(m).sum() > 0
    walk = boundary_walk(model, z, y, class_a="site1", class_b="site4")
    p = np.array(walk.probabilities)
    assert np.all(np.diff(p) > 0) and p[-1] == pytest.approx(0.9)  # confident on the other side, whatever the weights
    assert all(s.shape == (2 * 192, 64) and np.isfinite(s).all() for s in walk.spectrograms)


def test_report_escapes_names_and_has_every_section(simulated, tmp_path):
    survey, run, _ = simulated
    copy = tmp_path / "survey"
    shutil.copytree(survey, copy)
    evil = copy / "<script>alert(1)<" / "script>.wav"  # relative path: <script>alert(1)</script>.wav
    evil.parent.mkdir()
    evil.write_bytes(b"")
    latents = tmp_path / "latents.parquet"
    summary = encode(copy, run, latents, progress=False)
    assert "<script>alert(1)</script>.wav" in summary.skipped
    recs = group_units(read_latents(latents))
    eval_dir = tmp_path / "eval"
    write_evaluation(evaluate_descriptors(recs, "site", kinds=("mean",), seed=0), eval_dir, latents)
    html = write_report(run, eval_dir, tmp_path / "report.html").read_text()
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.wav" in html
    for section in (
        "Data",
        "Training",
        "Reconstruction",
        "Classification",
        "Saliency",
        "Boundary walk",
        "Projections",
        "Hardware",
        "Methods card",
    ):
        assert f">{section}" in html
    methods = json.loads((tmp_path / "methods.json").read_text())
    assert {
        "Data",
        "Preprocessing",
        "Architecture",
        "Training",
        "Randomness",
        "Splits",
        "Evaluation",
        "Post-processing",
        "Code and outputs",
        "Software and hardware",
    } <= set(methods)
    assert "AdamW" in methods["Training"]["optimiser"]
    # read from the records, not written into the card: the classifiers the evaluation ran, the run's resampler
    from ecovae.evaluate import classifiers, describe_classifier

    assert methods["Post-processing"]["classifiers"] == "; ".join(
        f"{k}: {describe_classifier(v)}" for k, v in classifiers().items()
    )
    assert json.loads((run / "run.json").read_text())["resampler"] in methods["Preprocessing"]["audio"]


def test_encoding_with_hardware_correction_brings_recorders_together(untrained_run, hardware_survey, tmp_path):
    from typer.testing import CliRunner

    from ecovae.cli import app

    gaps = {}
    for name, extra in (("plain", []), ("corrected", ["--correct-hardware", "recorder_model"])):
        out = tmp_path / f"{name}.parquet"
        result = CliRunner().invoke(
            app, ["encode", str(hardware_survey), "--model", str(untrained_run), "--out", str(out), "--quiet", *extra]
        )
        assert result.exit_code == 0, result.output
        recs = group_units(read_latents(out))
        z = TimeAveraged().fit_transform(recs.frames)
        by = recs.meta["recorder_model"].to_numpy()
        gaps[name] = np.linalg.norm(z[by == "bright"].mean(0) - z[by == "dull"].mean(0))
    assert gaps["corrected"] < 0.5 * gaps["plain"]


def test_evaluate_and_describe_units_from_the_command_line(simulated, tmp_path):
    """--unit and --window through the CLI, with the log-mel baseline that encoding wrote beside the latents."""
    from typer.testing import CliRunner

    from ecovae.cli import app

    _, _, latents = simulated
    runner = CliRunner()
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(latents),
            "--target",
            "site",
            "--unit",
            "site,recorder",
            "--window",
            "1D",
            "--baselines",
            "logmel",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    info = json.loads((out / "evaluation.json").read_text())
    frames = read_latents(latents)
    assert info["n_units"] == frames.groupby(["site", "recorder"]).ngroups == 8  # one survey day
    assert set(pd.read_csv(out / "metrics.csv")["features"]) == {"vae", "logmel"}
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert predictions["unit"].str.endswith("|2024-05-01T00:00").all()
    described = tmp_path / "d.parquet"
    result = runner.invoke(
        app,
        [
            "describe",
            str(latents),
            "--out",
            str(described),
            "--unit",
            "site",
            "--features",
            "logmel",
            "--kind",
            "moments",
        ],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(described)
    assert len(table) == 4 and table["n_frames"].sum() == len(frames)
    # the log-mel mean per band of a site is the mean of its frames' band means
    site1 = frames[frames["site"] == "site1"].filter(like="logmel_").mean().to_numpy()
    np.testing.assert_allclose(
        table.loc[table["site"] == "site1", [f"mean_{i:03d}" for i in range(64)]].to_numpy()[0],
        site1,
        rtol=1e-4,
        atol=1e-4,
    )
    survey, run, _ = simulated
    result = runner.invoke(
        app,
        [
            "interpret",
            str(latents),
            "--model",
            str(run),
            "--target",
            "site",
            "--unit",
            "site,recorder",
            "--window",
            "1D",
            "--recordings",
            str(survey),
            "--out",
            str(tmp_path / "interp"),
        ],
    )
    assert result.exit_code == 0, result.output
    walked = json.loads((tmp_path / "interp" / "interpretation.json").read_text())
    assert walked["saliency"]["recording"] in set(frames["path"])  # a unit's recording, shown
    assert walked["boundary_walk"]["probabilities"][-1] == pytest.approx(0.9)
    # exemplars to hear: each site's own recordings, as Ogg files that decode to 1.5 s + frame + 1.5 s at most
    assert {e["class"] for e in walked["exemplars"]} == set(frames["site"])
    for e in walked["exemplars"]:
        assert e["path"].startswith(e["class"] + "/")
        sound, rate = sf.read(tmp_path / "interp" / e["audio"])
        assert rate == 24_000 and 0 < len(sound) / rate <= 1.5 + 1.536 + 1.5 + 0.01
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(latents),
            "--target",
            "site",
            "--group",
            "hour",
            "--unit",
            "site",
            "--baselines",
            "",
            "--out",
            str(tmp_path / "bad"),
        ],
    )
    assert result.exit_code == 2 and "cannot group units" in result.output


def test_the_surest_exemplar_is_typical_of_its_class_not_an_outlier():
    """One frame of site b lies far out along the line between the sites (a siren once in the survey): the
    linear classifier is surest of it, but it is no exemplar of site b; the typical frames are."""
    from ecovae.interpret import exemplar_frames

    rng = np.random.default_rng(0)
    mu = np.r_[rng.normal(-1, 1, (40, 4)), rng.normal(1, 1, (40, 4))]
    mu[79] = [12.0, 12.0, 12.0, 12.0]
    frames = pd.DataFrame(mu, columns=[f"mu_{i}" for i in range(4)])
    frames["site"] = ["a"] * 40 + ["b"] * 40
    frames["path"] = [f"{s}/{i}.wav" for s, i in zip(frames["site"], range(80), strict=True)]  # one per recording
    frames["frame_offset_s"] = 0.0
    classifier = LogisticRegression().fit(mu, frames["site"])
    assert classifier.predict_proba(mu)[:, 1].argmax() == 79  # the outlier is what the classifier is surest of
    wanted = exemplar_frames(frames, classifier, "site", per_class=2)
    sure_b = [info for _, _, _, info in wanted if info["class"] == "b" and info["why"] == "classifier most sure"]
    assert len(sure_b) == 2 and "b/79.wav" not in [p for _, p, _, _ in wanted]
    assert all(0.5 < info["probability"] < classifier.predict_proba(mu[79:])[0, 1] for info in sure_b)
    # the survey's unusual frames (the novelty ranking's top list) are no one's exemplar
    # the survey's unusual frames (the novelty ranking's top list) and their neighbours are no one's exemplar
    frames["frame_in_recording"] = 0
    chosen = [p for _, p, _, _ in wanted]
    unusual = pd.DataFrame({"path": chosen, "frame_in_recording": 0})
    again = [p for _, p, _, _ in exemplar_frames(frames, classifier, "site", per_class=2, unusual=unusual)]
    assert len(again) == len(chosen) and not set(again) & set(chosen)
    unusual["frame_in_recording"] = 1  # the next frame of each: an excerpt of frame 0 would play it
    again = [p for _, p, _, _ in exemplar_frames(frames, classifier, "site", per_class=2, unusual=unusual)]
    assert not set(again) & set(chosen)
