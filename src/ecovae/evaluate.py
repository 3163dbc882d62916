"""Classification from descriptors, cross-validated with groups, with honest metrics.

Every descriptor kind and classifier is scored on the *same* folds. Folds are
made of whole recordings (or whole recorders, days, ... with ``group``), so
frames of one recording never sit on both sides of a split. Metrics are given
per fold and pooled over all test predictions, beside the chance level.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ecovae.descriptors import (
    DESCRIPTORS,
    MixtureMoments,
    MixtureSampleClassifier,
    TimeAveraged,
    Units,
)
from ecovae.outputs import EVALUATION_FILE, METRICS_FILE, PER_CLASS_FILE, PER_FOLD_FILE, PREDICTIONS_FILE

log = logging.getLogger(__name__)


MIXTURE_SAMPLES = 32  # draws per unit from its frames' distribution (the mixture descriptor)
CHANCE_REPEATS = 20  # seeds averaged for the random dummy strategies


def linear_classifier():
    """Logistic regression on standardised features, classes weighted to balance: the one linear rule of the
    evaluation, the hardware check and the boundary walk."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced"))


def classifiers(seed: int = 0) -> dict:
    return {
        "logreg": linear_classifier(),
        "rf": RandomForestClassifier(n_estimators=200, class_weight="balanced", random_state=seed),
    }


def model_for(kind: str, classifier, seed: int = 0):
    """A pipeline from a list of recordings to class probabilities."""
    if kind == "mean":
        return make_pipeline(TimeAveraged(), clone(classifier))
    if kind == "moments":
        return make_pipeline(MixtureMoments(), clone(classifier))
    if kind == "mixture":
        return MixtureSampleClassifier(clone(classifier), n_samples=MIXTURE_SAMPLES, random_state=seed)
    raise ValueError(f"unknown descriptor {kind!r}; choose from {DESCRIPTORS}")


@dataclass
class Folds:
    target: str
    group: str
    y: np.ndarray  # class per unit
    groups: np.ndarray
    splits: list[tuple[np.ndarray, np.ndarray]]
    classes: list[str]
    dropped: dict[str, int] = field(default_factory=dict)  # classes with too few groups, left out
    unlabelled: list[str] = field(default_factory=list)  # units with no value of the target, left out


MAX_CLASSES = 200  # more values than this is an identifier or a measurement, not a class label


def make_folds(
    meta: pd.DataFrame, target: str, group: str | None = None, *, n_splits: int = 5, seed: int = 0
) -> tuple[Folds, np.ndarray]:
    """Stratified folds of whole groups (default: each unit its own group).

    Returns the folds and the index of the units kept (those with a
    label, of classes present in at least two groups).
    """
    if target not in meta.columns:
        raise ValueError(f"no label column {target!r}; the latents have {[c for c in meta.columns if c != 'path']}")
    # frames of one recording are alike: a frame's fold is its recording's, lest a neighbour be tested on
    frames_as_units = "frame_in_recording" in meta.columns
    group = group or ("path" if frames_as_units else "unit" if "unit" in meta.columns else "path")
    if group not in meta.columns:
        raise ValueError(
            f"no column {group!r} to group folds by: a label that is not the same for every frame "
            f"of a unit cannot group units; the units have {list(meta.columns)}"
        )
    labelled = (meta[target].notna() & (meta[target].astype(str).str.strip() != "")).to_numpy()
    unlabelled = [str(u) for u in meta.loc[~labelled, "unit" if "unit" in meta.columns else "path"]]
    if unlabelled:
        log.warning(
            "left out %d of %d units with no %r label, e.g. %s", len(unlabelled), len(meta), target, unlabelled[:3]
        )
    values = meta[target].astype(str)
    n_classes = values[labelled].nunique()
    if n_classes > MAX_CLASSES:
        raise ValueError(
            f"{target!r} has {n_classes} different values over {int(labelled.sum())} units: a classifier needs a few "
            f"classes with several units each (at most {MAX_CLASSES}); is {target!r} an identifier or a measurement?"
        )
    groups_per_class = meta[labelled].groupby(values[labelled])[group].nunique()
    small = groups_per_class[groups_per_class < 2]
    dropped = {str(k): int(v) for k, v in small.items()}
    if dropped:
        log.warning("left out %d classes with fewer than 2 %s groups: %s", len(dropped), group, _shorten(dropped))
    keep = np.flatnonzero(labelled & ~values.isin(list(dropped)).to_numpy())
    y = values.to_numpy()[keep].astype(str)
    groups = meta[group].astype(str).to_numpy()[keep]
    classes = sorted({str(v) for v in y})
    if len(classes) < 2:
        raise ValueError(f"{target!r} needs at least two classes with two or more groups each; found {classes}")
    k = int(min(n_splits, groups_per_class.drop(small.index).min()))
    splitter = StratifiedGroupKFold(n_splits=max(2, k), shuffle=True, random_state=seed)
    splits = list(splitter.split(np.zeros(len(y)), y, groups))
    return Folds(target, group, y, groups, splits=splits, classes=classes, dropped=dropped, unlabelled=unlabelled), keep


def _shorten(d: dict, n: int = 8) -> str:
    """A long dict in a log line: its first ``n`` items and how many more."""
    items = ", ".join(f"{k}: {v}" for k, v in list(d.items())[:n])
    return items + (f", ... ({len(d) - n} more)" if len(d) > n else "")


def _scores(y_true, y_pred, proba, classes) -> dict[str, float]:
    out = {
        "accuracy": accuracy_score(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
        "macro_f1": f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0),
    }
    present = sorted(set(y_true))
    try:
        if len(classes) == 2:
            out["roc_auc"] = roc_auc_score(y_true == classes[1], proba[:, 1]) if len(present) == 2 else np.nan
        elif len(present) == len(classes):
            out["roc_auc"] = roc_auc_score(y_true, proba, multi_class="ovr", labels=classes)
        else:
            out["roc_auc"] = np.nan
    except ValueError:
        out["roc_auc"] = np.nan
    return out


def chance_levels(folds: Folds, seed: int = 0) -> dict[str, float]:
    """What a classifier that ignores the features scores.

    Balanced accuracy 1/k and ROC-AUC 0.5 whatever the class frequencies; accuracy:
    always the most frequent class; macro-F1: scikit-learn's DummyClassifier guessing
    at the training folds' class frequencies on the same folds, mean of
    ``CHANCE_REPEATS`` seeds (for unbalanced classes this is not 1/k).
    """
    X = np.zeros((len(folds.y), 1))
    f1 = []
    for r in range(CHANCE_REPEATS):
        dummy = DummyClassifier(strategy="stratified", random_state=seed + r)
        pred = cross_val_predict(dummy, X, folds.y, cv=folds.splits)
        f1.append(f1_score(folds.y, pred, labels=folds.classes, average="macro", zero_division=0))
    counts = pd.Series(folds.y).value_counts()
    return {
        "balanced_accuracy": 1 / len(folds.classes),
        "accuracy": float(counts.max() / counts.sum()),
        "macro_f1": float(np.mean(f1)),
        "roc_auc": 0.5,
    }


def describe_classifier(estimator) -> str:
    """A classifier's settings as scikit-learn prints them (those not at their defaults), steps joined."""
    steps = estimator.steps if hasattr(estimator, "steps") else [(None, estimator)]
    return " -> ".join(" ".join(repr(est).split()) for _, est in steps)


@dataclass
class Evaluation:
    target: str
    group: str
    classes: list[str]
    summary: pd.DataFrame  # one row per (features, descriptor, classifier): pooled and mean/sd over folds
    per_fold: pd.DataFrame
    per_class: pd.DataFrame
    confusion: dict[tuple[str, str, str], np.ndarray]  # counts, rows true, columns predicted
    predictions: pd.DataFrame
    chance: dict[str, float]
    n_units: int
    n_folds: int
    dropped: dict[str, int]
    unit: str = "recording"
    left_out_units: list[str] = field(default_factory=list)  # units some feature set lacks (a baseline failed)
    unplaced: dict[str, int] = field(default_factory=dict)  # path -> frames without a time, so in no window
    classifiers: dict[str, str] = field(default_factory=dict)  # name -> the estimator, as scikit-learn prints it
    unlabelled: list[str] = field(default_factory=list)  # units with no value of the target: not evaluated

    @property
    def n_recordings(self) -> int:  # the unit is a recording by default
        return self.n_units


def _align(units: Units, others: dict[str, Units]) -> tuple[Units, dict[str, Units], list[str]]:
    """Every feature set on the same units, in the same order: those all of them have."""
    common = set(units.meta["unit"])
    for other in others.values():
        common &= set(other.meta["unit"])
    left_out = sorted(set(units.meta["unit"]) - common)
    if left_out:
        log.warning("left out %d units that a baseline could not describe: %s", len(left_out), left_out[:5])

    def take(u: Units) -> Units:
        pos = {k: i for i, k in enumerate(u.meta["unit"])}
        idx = [pos[k] for k in units.meta["unit"] if k in common]
        return Units(
            [u.frames[i] for i in idx],
            u.meta.iloc[idx].reset_index(drop=True),
            u.latent_dim,
            u.features,
            unplaced=u.unplaced,
        )

    return take(units), {k: take(v) for k, v in others.items()}, left_out


def _scored(key: dict, proba: np.ndarray, folds, names: np.ndarray) -> dict:
    """One feature set x descriptor x classifier scored from its cross-validated probabilities: the summary row,
    per fold, per class, the confusion matrix and the predictions."""
    classes = folds.classes
    fold_rows, fold_of = [], np.zeros(len(proba), int)
    for f, (_, te) in enumerate(folds.splits):
        fold_of[te] = f
        pred = np.array(classes)[proba[te].argmax(1)]
        fold_rows.append({**key, "fold": f, "n_test": len(te), **_scores(folds.y[te], pred, proba[te], classes)})
    pred = np.array(classes)[proba.argmax(1)]
    per_fold = pd.DataFrame(fold_rows)
    row = {**key, **_scores(folds.y, pred, proba, classes)}
    for m in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"):
        row[f"{m}_fold_mean"] = per_fold[m].mean()
        row[f"{m}_fold_sd"] = per_fold[m].std(ddof=1) if len(per_fold) > 1 else np.nan
    p, r, f1, support = precision_recall_fscore_support(folds.y, pred, labels=classes, zero_division=0)
    per_class = [
        {**key, "class": c, "precision": p[i], "recall": r[i], "f1": f1[i], "support": int(support[i])}
        for i, c in enumerate(classes)
    ]
    predictions = pd.DataFrame(
        {
            **key,
            "unit": names,
            "fold": fold_of,
            "true": folds.y,
            "predicted": pred,
            **{f"p_{c}": proba[:, i] for i, c in enumerate(classes)},
        }
    )
    confusion = confusion_matrix(folds.y, pred, labels=classes)
    return {"row": row, "folds": fold_rows, "classes": per_class, "confusion": confusion, "predictions": predictions}


def evaluate_descriptors(
    units: Units,
    target: str,
    group: str | None = None,
    *,
    kinds=DESCRIPTORS,
    n_splits: int = 5,
    seed: int = 0,
    features: dict[str, Units] | None = None,
    classifier_names: Sequence[str] | None = None,
    unit: str = "recording",
) -> Evaluation:
    """Cross-validate every feature set x descriptor kind x classifier on the same grouped folds.

    ``units`` are the VAE's; ``features`` adds other per-frame feature sets (name -> the same
    units, e.g. the log-mel band means), each described by the same ``kinds``.

    >>> import numpy as np, pandas as pd
    >>> from ecovae import group_units
    >>> rng = np.random.default_rng(0)
    >>> n = 12  # recordings of 4 frames, half in each habitat, the habitats far apart in mu
    >>> habitat = np.repeat(["forest", "farm"], n // 2 * 4)
    >>> mu = rng.normal(size=(n * 4, 2)) + np.where(habitat == "forest", 5.0, -5.0)[:, None]
    >>> frames = pd.DataFrame({"path": np.repeat([f"r{i}.wav" for i in range(n)], 4), "habitat": habitat,
    ...                        "mu_000": mu[:, 0], "mu_001": mu[:, 1], "logvar_000": 0.0, "logvar_001": 0.0})
    >>> ev = evaluate_descriptors(group_units(frames), "habitat", n_splits=3, kinds=("mean",),
    ...                           classifier_names=["logreg"])
    >>> ev.n_units, ev.n_folds, float(ev.summary["balanced_accuracy"].iloc[0])
    (12, 3, 1.0)
    """
    sets = {units.features: units, **(features or {})}
    units, others, left_out = _align(units, {k: v for k, v in sets.items() if k != units.features})
    sets = {units.features: units, **others}
    folds, keep = make_folds(units.meta, target, group or "unit", n_splits=n_splits, seed=seed)
    names = units.meta["unit"].to_numpy()[keep]
    classes = folds.classes
    all_classifiers = classifiers(seed)
    chosen = {k: all_classifiers[k] for k in (classifier_names or all_classifiers)}
    rows, fold_rows, class_rows, pred_rows, confusion = [], [], [], [], {}
    for feats, u in sets.items():
        X = [u.frames[i] for i in keep]
        for kind in kinds:
            for clf_name, clf in chosen.items():
                # every fold's model fitted and asked through scikit-learn, on the folds all sets share
                proba = cross_val_predict(
                    model_for(kind, clf, seed), X, folds.y, cv=folds.splits, method="predict_proba"
                )
                key = {"features": feats, "descriptor": kind, "classifier": clf_name}
                one = _scored(key, proba, folds, names)
                rows.append(one["row"])
                fold_rows += one["folds"]
                class_rows += one["classes"]
                confusion[(feats, kind, clf_name)] = one["confusion"]
                pred_rows.append(one["predictions"])
    chance = chance_levels(folds, seed)
    return Evaluation(
        target,
        folds.group,
        classes,
        pd.DataFrame(rows),
        per_fold=pd.DataFrame(fold_rows),
        per_class=pd.DataFrame(class_rows),
        confusion=confusion,
        predictions=pd.concat(pred_rows, ignore_index=True),
        chance=chance,
        n_units=len(keep),
        n_folds=len(folds.splits),
        dropped=folds.dropped,
        unit=unit,
        left_out_units=left_out,
        unplaced=dict(units.unplaced),
        classifiers={name: describe_classifier(clf) for name, clf in chosen.items()},
        unlabelled=folds.unlabelled,
    )


FEATURE_SETS = {
    "vae": "VAE posteriors per 1.536 s frame (mu, log var)",
    "logmel": "mean log-mel per band per 1.536 s frame, the VAE's own input (no learning)",
    "indices": "scikit-maad temporal and spectral alpha acoustic indices per window",
    "birdnet": "BirdNET 2.4 embeddings (1024-d per 3 s window)",
}
DESCRIPTOR_TEXT = {
    "mean": "time average over the unit's frames",
    "moments": "mean and variance over the unit's frames (for the VAE: of the mixture of frame posteriors)",
    "mixture": f"{MIXTURE_SAMPLES} samples per unit from its frames' distribution; probabilities averaged over samples",
}


def verdict(summary: pd.DataFrame, ours: str = "vae") -> dict:
    """Which row won, and the VAE's best against each other feature set's best, with the fold spread."""
    best = summary.sort_values("balanced_accuracy", ascending=False, kind="stable")
    top = best.iloc[0]

    def row(r) -> dict:
        return {
            "features": r["features"],
            "descriptor": r["descriptor"],
            "classifier": r["classifier"],
            "balanced_accuracy": float(r["balanced_accuracy"]),
            "fold_sd": float(r["balanced_accuracy_fold_sd"]),
        }

    out = {"best": row(top)}
    mine = best[best["features"] == ours]
    if len(mine):
        m = mine.iloc[0]
        out["vae"] = row(m)
        out["against"] = {}
        for feats, rows in best[best["features"] != ours].groupby("features", sort=False):
            b = rows.iloc[0]
            out["against"][feats] = {**row(b), "difference": float(m["balanced_accuracy"] - b["balanced_accuracy"])}
    return out


def write_evaluation(
    ev: Evaluation, out: Path | str, latents: Path | str | None = None, *, notes: dict[str, str] | None = None
) -> Path:
    """metrics.csv, per_fold.csv, per_class.csv, predictions.parquet, confusion_*.csv, evaluation.json;
    confusion matrix pictures for the best row of each feature set."""
    from ecovae import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ev.summary.to_csv(out / METRICS_FILE, index=False)
    ev.per_fold.to_csv(out / PER_FOLD_FILE, index=False)
    ev.per_class.to_csv(out / PER_CLASS_FILE, index=False)
    ev.predictions.to_parquet(out / PREDICTIONS_FILE, index=False)
    best = (
        ev.summary.sort_values("balanced_accuracy", ascending=False, kind="stable")
        .groupby("features", sort=False)
        .head(1)
    )
    pictured = set(zip(best["features"], best["descriptor"], best["classifier"], strict=True))
    images = {}
    for (feats, kind, clf), cm in ev.confusion.items():
        stem = f"confusion_{feats}_{kind}_{clf}"
        pd.DataFrame(cm, index=ev.classes, columns=ev.classes).rename_axis("true \\ predicted").to_csv(
            out / f"{stem}.csv"
        )
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        pd.DataFrame(norm, index=ev.classes, columns=ev.classes).rename_axis("true \\ predicted").to_csv(
            out / f"{stem}_normalised.csv"
        )
        if (feats, kind, clf) in pictured:
            plots.confusion(cm, ev.classes, f"{ev.target}: {feats} {kind} / {clf}", path=out / f"{stem}.png")
            images[f"{feats} {kind} / {clf}"] = f"{stem}.png"
    info = {
        "latents": str(Path(latents).resolve()) if latents else None,
        "target": ev.target,
        "unit": ev.unit,
        "group": ev.group,
        "classes": ev.classes,
        "n_units": ev.n_units,
        "n_folds": ev.n_folds,
        "chance": ev.chance,
        "chance_by": "balanced accuracy 1/k, ROC-AUC 0.5; accuracy: the most frequent class; macro-F1: "
        f"scikit-learn's DummyClassifier guessing at the class frequencies on the same folds, mean of {CHANCE_REPEATS} seeds",
        "classifiers": ev.classifiers,
        "feature_sets": {k: FEATURE_SETS.get(k, k) + (notes or {}).get(k, "") for k in ev.summary["features"].unique()},
        "descriptors": {k: DESCRIPTOR_TEXT.get(k, k) for k in ev.summary["descriptor"].unique()},
        "dropped_classes": ev.dropped,
        "left_out_units": ev.left_out_units,
        "unlabelled_units": ev.unlabelled,
        "confusion_images": images,
        "frames_without_time": {"frames": sum(ev.unplaced.values()), "recordings": sorted(ev.unplaced)},
        **verdict(ev.summary),
    }
    (out / EVALUATION_FILE).write_text(json.dumps(info, indent=2, default=float) + "\n")
    return out
