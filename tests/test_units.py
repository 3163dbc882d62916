"""Units of analysis over time, and every feature set on the same units (hand-made tables, real Parquet)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecovae.baselines import baseline_units
from ecovae.descriptors import MixtureMoments, TimeAveraged, group_units
from ecovae.evaluate import evaluate_descriptors


def _frames(rows: list[tuple[str, str, str, str, float]], dim: int = 2) -> pd.DataFrame:
    """(path, site, recorder, recording start, seconds into it) -> a latents-like table; mu_000 = row number."""
    out = []
    for i, (path, site, recorder, start, offset) in enumerate(rows):
        t0 = pd.Timestamp(start) if start else pd.NaT
        out.append(
            {
                "path": path,
                "site": site,
                "recorder": recorder,
                "start_time": t0,
                "frame_time": t0 + pd.Timedelta(seconds=offset),
                "frame_offset_s": offset,
                "frame_in_recording": int(offset // 1.536),
                "hour": str(t0.hour) if start else None,
                **{f"mu_{d:03d}": float(i) + d for d in range(dim)},
                **{f"logvar_{d:03d}": 0.0 for d in range(dim)},
                **{f"logmel_{d:03d}": -float(i) for d in range(3)},
            }
        )
    return pd.DataFrame(out)


ROWS = [  # two recorders at site A over two days (one recording crossing midnight), one at site B
    ("A/r1/0501_0600.wav", "A", "r1", "2024-05-01 06:00", 0.0),
    ("A/r1/0501_0600.wav", "A", "r1", "2024-05-01 06:00", 1.536),
    ("A/r1/0501_2359.wav", "A", "r1", "2024-05-01 23:59:59", 0.0),  # 23:59:59
    ("A/r1/0501_2359.wav", "A", "r1", "2024-05-01 23:59:59", 1.536),  # 00:00:00.536 next day
    ("A/r1/0502_0600.wav", "A", "r1", "2024-05-02 06:00", 0.0),
    ("A/r2/0501_1200.wav", "A", "r2", "2024-05-01 12:00", 0.0),
    ("B/r3/0501_1200.wav", "B", "r3", "2024-05-01 12:00", 0.0),
    ("B/r3/0501_1200.wav", "B", "r3", "2024-05-01 12:00", 1.536),
]


def test_default_unit_is_the_recording_with_frames_in_order():
    table = _frames(ROWS).sample(frac=1, random_state=0)  # order must not matter
    units = group_units(table)
    assert list(units.meta["unit"]) == sorted({r[0] for r in ROWS})
    a = units.meta.index[units.meta["unit"] == "A/r1/0501_2359.wav"][0]
    np.testing.assert_array_equal(units.frames[a][:, 0], [2.0, 3.0])  # time order kept
    assert units.frames[a].shape == (2, 4) and units.latent_dim == 2


def test_site_units_hold_every_frame_of_the_site():
    units = group_units(_frames(ROWS), unit="site")
    assert list(units.meta["unit"]) == ["A", "B"]
    assert units.meta.set_index("unit")["n_frames"].to_dict() == {"A": 6, "B": 2}
    assert units.meta.set_index("unit")["n_recordings"].to_dict() == {"A": 4, "B": 1}
    assert sorted(units.frames[0][:, 0]) == [0, 1, 2, 3, 4, 5]
    assert "recorder" not in units.meta.columns  # not one value per unit: not a label of it
    expected_mean = np.mean([0, 1, 2, 3, 4, 5])
    assert TimeAveraged().fit_transform(units.frames)[0][0] == pytest.approx(expected_mean)


def test_a_day_window_cuts_at_midnight_by_frame_time():
    units = group_units(_frames(ROWS), unit="site,recorder", window="1D")
    by_unit = dict(zip(units.meta["unit"], units.frames, strict=True))
    assert set(by_unit) == {
        "A|r1|2024-05-01T00:00",
        "A|r1|2024-05-02T00:00",
        "A|r2|2024-05-01T00:00",
        "B|r3|2024-05-01T00:00",
    }
    # the recording that starts at 23:59:59 gives its first frame to 1 May and its second to 2 May
    np.testing.assert_array_equal(by_unit["A|r1|2024-05-01T00:00"][:, 0], [0, 1, 2])
    np.testing.assert_array_equal(by_unit["A|r1|2024-05-02T00:00"][:, 0], [3, 4])
    assert {"site", "recorder", "window_start"} <= set(units.meta.columns)


def test_frames_without_a_time_are_reported_not_silently_dropped(caplog):
    rows = [*ROWS, ("C/undated.wav", "C", "r4", "", 0.0), ("C/undated.wav", "C", "r4", "", 1.536)]
    units = group_units(_frames(rows), unit="site", window="1D")
    assert units.unplaced == {"C/undated.wav": 2}
    assert "C" not in set(units.meta["site"]) and "no time" in caplog.text
    assert sum(units.meta["n_frames"]) == len(ROWS)
    # and the count goes on to the evaluation (evaluation.json, the report)
    two_days = [
        (f"{site}/{day}.wav", site, "r", f"2024-05-0{day} 12:00", t)
        for site in "AB"
        for day in (1, 2)
        for t in (0.0, 1.536)
    ] + rows[-2:]
    units = group_units(_frames(two_days), unit="site", window="1D")
    ev = evaluate_descriptors(units, "site", kinds=("mean",), n_splits=2, classifier_names=["logreg"])
    assert ev.n_units == 4 and ev.unplaced == {"C/undated.wav": 2}
    with pytest.raises(ValueError, match="window"):
        group_units(_frames(ROWS), window="fortnightly")
    with pytest.raises(ValueError, match="no label column"):
        group_units(_frames(ROWS), unit="habitat")


def test_point_features_have_zero_variance_and_share_the_units():
    table = _frames(ROWS)
    vae = group_units(table, unit="site")
    logmel = group_units(table, unit="site", features="logmel")
    assert list(logmel.meta["unit"]) == list(vae.meta["unit"]) and logmel.latent_dim == 3
    moments = MixtureMoments().fit_transform(logmel.frames)
    np.testing.assert_allclose(moments[0][:3], -np.mean([0, 1, 2, 3, 4, 5]) + np.zeros(3))
    np.testing.assert_allclose(moments[0][3:], np.var([0, 1, 2, 3, 4, 5]))  # variance over time only


def test_baseline_windows_join_the_latents_on_path_and_time():
    latents = _frames(ROWS)
    windows = pd.DataFrame(
        {
            "path": ["A/r1/0501_2359.wav", "A/r1/0501_2359.wav", "B/r3/0501_1200.wav"],
            "frame_offset_s": [0.0, 3.0, 0.0],
            "indices_000": [1.0, 2.0, 3.0],
        }
    )
    units = baseline_units(windows, latents, "indices", unit="site", window="1D")
    by_unit = dict(zip(units.meta["unit"], units.frames, strict=True))
    # the window at 3 s into the recording that starts at 23:59:59 falls on 2 May
    assert set(by_unit) == {"A|2024-05-01T00:00", "A|2024-05-02T00:00", "B|2024-05-01T00:00"}
    assert by_unit["A|2024-05-02T00:00"][:, 0].tolist() == [2.0]
    assert units.meta.set_index("unit").loc["B|2024-05-01T00:00", "site"] == "B"


def test_every_feature_set_is_scored_on_the_same_units_and_folds():
    rng = np.random.default_rng(0)
    rows = []
    for site in ("A", "B", "C"):
        for day in range(1, 5):
            for h in range(3):
                rows.append((f"{site}/{day}_{h}.wav", site, f"{site}1", f"2024-05-0{day} {6 * h + 1:02d}:00", 0.0))
    table = _frames(rows)
    table[[c for c in table.columns if c.startswith(("mu_", "logmel_"))]] = rng.normal(size=(len(table), 5))
    vae = group_units(table, unit="site", window="1D")
    logmel = group_units(table, unit="site", window="1D", features="logmel")
    ev = evaluate_descriptors(
        vae,
        "site",
        kinds=("mean", "moments"),
        n_splits=4,
        features={"logmel": logmel},
        classifier_names=["logreg"],
        unit="site per 1D",
    )
    assert ev.n_units == 12 and set(ev.summary["features"]) == {"vae", "logmel"}
    folds = ev.predictions.groupby(["features", "descriptor"]).apply(lambda g: tuple(g.sort_values("unit")["fold"]))
    assert folds.nunique() == 1  # one set of folds for every row
    assert (ev.predictions.groupby(["features", "descriptor"])["unit"].nunique() == 12).all()


@pytest.mark.parametrize("name", ["TimeAveraged", "MixtureMoments", "MixtureSampleClassifier"])
def test_descriptors_pass_scikit_learns_estimator_checks_where_the_input_can_be_a_posterior(name):
    """The checks that feed 3 or 5 columns cannot apply: a posterior's columns are [mu | log var], in pairs,
    and the descriptors refuse an odd width with a clear message. The mixture classifier reads the second
    column of the checks' blobs as a log variance, so its samples are mostly noise (check_classifiers_train),
    and its inner LogisticRegression refuses a single class (check_classifiers_one_label)."""
    import warnings

    from sklearn.utils.estimator_checks import check_estimator

    from ecovae import descriptors

    est = (
        getattr(descriptors, name)()
        if name != "MixtureSampleClassifier"
        else descriptors.MixtureSampleClassifier(n_samples=4)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(est, on_fail=None)
    failed = [r for r in results if r["status"] == "failed"]
    odd_width = [r for r in failed if "an even number" in str(r["exception"])]
    other = {r["check_name"] for r in failed} - {r["check_name"] for r in odd_width}
    allowed = {"check_classifiers_train", "check_classifiers_one_label"} if name == "MixtureSampleClassifier" else set()
    assert other <= allowed, other
    assert sum(r["status"] == "passed" for r in results) >= 30
    fitted = (
        est.fit(np.zeros((4, 6)), ["a", "b", "a", "b"])
        if name == "MixtureSampleClassifier"
        else est.fit([np.zeros((3, 6))])
    )
    assert fitted.n_features_in_ == 6
    if name != "MixtureSampleClassifier":
        names = list(fitted.get_feature_names_out())
        assert (
            names[:3] == ["mean_000", "mean_001", "mean_002"]
            and len(names) == fitted.transform([np.zeros((2, 6))]).shape[1]
        )
        with pytest.raises(ValueError, match="X has 4 features, but .* expecting 6"):
            fitted.transform([np.zeros((2, 4))])
