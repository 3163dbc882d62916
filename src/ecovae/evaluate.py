"""Classification from descriptors, cross-validated with groups, with honest metrics.

Every descriptor kind and classifier is scored on the *same* folds. Folds are
made of whole recordings (or whole recorders, days, ... with ``group``), so
frames of one recording never sit on both sides of a split. Metrics are given
per fold and pooled over all test predictions, beside the chance level.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import clone
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
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ecovae.descriptors import (
    DESCRIPTORS,
    MixtureMoments,
    MixtureSampleClassifier,
    Recordings,
    TimeAveraged,
)

log = logging.getLogger(__name__)


def classifiers(seed: int = 0) -> dict:
    return {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced")),
        "rf": RandomForestClassifier(n_estimators=200, class_weight="balanced", random_state=seed),
    }


def model_for(kind: str, classifier, seed: int = 0):
    """A pipeline from a list of recordings to class probabilities."""
    if kind == "mean":
        return make_pipeline(TimeAveraged(), clone(classifier))
    if kind == "moments":
        return make_pipeline(MixtureMoments(), clone(classifier))
    if kind == "mixture":
        return MixtureSampleClassifier(clone(classifier), n_samples=32, random_state=seed)
    raise ValueError(f"unknown descriptor {kind!r}; choose from {DESCRIPTORS}")


@dataclass
class Folds:
    target: str
    group: str
    y: np.ndarray  # class per recording
    groups: np.ndarray
    splits: list[tuple[np.ndarray, np.ndarray]]
    classes: list[str]
    dropped: dict[str, int] = field(default_factory=dict)  # classes with too few groups, left out


def make_folds(meta: pd.DataFrame, target: str, group: str | None = None, n_splits: int = 5, seed: int = 0) -> tuple[Folds, np.ndarray]:
    """Stratified folds of whole groups (default: each recording its own group).

    Returns the folds and the index of the recordings kept (those with a
    label, of classes present in at least two groups).
    """
    if target not in meta.columns:
        raise ValueError(f"no label column {target!r}; the latents have {[c for c in meta.columns if c != 'path']}")
    group = group or "path"
    if group not in meta.columns:
        raise ValueError(f"no column {group!r} to group folds by")
    labelled = meta[target].notna() & (meta[target].astype(str) != "")
    groups_per_class = meta[labelled].groupby(target)[group].nunique()
    small = groups_per_class[groups_per_class < 2]
    if len(small):
        log.warning("left out classes with fewer than 2 %s groups: %s", group, dict(small))
    keep = np.flatnonzero(labelled & ~meta[target].isin(small.index))
    y = meta[target].to_numpy()[keep].astype(str)
    groups = meta[group].astype(str).to_numpy()[keep]
    classes = sorted(set(y))
    if len(classes) < 2:
        raise ValueError(f"{target!r} needs at least two classes with two or more groups each; found {classes}")
    k = int(min(n_splits, groups_per_class.drop(small.index).min()))
    splitter = StratifiedGroupKFold(n_splits=max(2, k), shuffle=True, random_state=seed)
    splits = list(splitter.split(np.zeros(len(y)), y, groups))
    return Folds(target, group, y, groups, splits, classes, dict(small)), keep


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


@dataclass
class Evaluation:
    target: str
    group: str
    classes: list[str]
    summary: pd.DataFrame  # one row per (descriptor, classifier): pooled and mean/sd over folds
    per_fold: pd.DataFrame
    per_class: pd.DataFrame
    confusion: dict[tuple[str, str], np.ndarray]  # counts, rows true, columns predicted
    predictions: pd.DataFrame
    chance: dict[str, float]
    n_recordings: int
    n_folds: int
    dropped: dict[str, int]


def evaluate_descriptors(
    recs: Recordings, target: str, group: str | None = None, kinds=DESCRIPTORS, n_splits: int = 5, seed: int = 0,
    features: dict[str, np.ndarray] | None = None,
) -> Evaluation:
    """Cross-validate every descriptor kind x classifier on the same grouped folds.

    ``features`` adds other feature sets (name -> one row per recording), scored the same way.
    """
    folds, keep = make_folds(recs.meta, target, group, n_splits, seed)
    X = [recs.frames[i] for i in keep]
    paths = recs.meta["path"].to_numpy()[keep]
    classes = folds.classes
    rows, fold_rows, class_rows, pred_rows, confusion = [], [], [], [], {}
    for kind in [*kinds, *(features or {})]:
        for clf_name, clf in classifiers(seed).items():
            proba = np.zeros((len(X), len(classes)))
            fold_of = np.zeros(len(X), int)
            for f, (tr, te) in enumerate(folds.splits):
                if features and kind in features:
                    model = clone(clf).fit(features[kind][keep][tr], folds.y[tr])
                    p = model.predict_proba(features[kind][keep][te])
                else:
                    model = model_for(kind, clf, seed).fit([X[i] for i in tr], folds.y[tr])
                    p = model.predict_proba([X[i] for i in te])
                cols = [classes.index(c) for c in model.classes_]
                proba[np.ix_(te, cols)] = p
                fold_of[te] = f
                pred = np.array(classes)[proba[te].argmax(1)]
                fold_rows.append({"descriptor": kind, "classifier": clf_name, "fold": f, "n_test": len(te),
                                  **_scores(folds.y[te], pred, proba[te], classes)})  # fmt: skip
            pred = np.array(classes)[proba.argmax(1)]
            pooled = _scores(folds.y, pred, proba, classes)
            per_fold = pd.DataFrame([r for r in fold_rows if r["descriptor"] == kind and r["classifier"] == clf_name])
            row = {"descriptor": kind, "classifier": clf_name, **pooled}
            for m in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"):
                row[f"{m}_fold_mean"] = per_fold[m].mean()
                row[f"{m}_fold_sd"] = per_fold[m].std(ddof=1) if len(per_fold) > 1 else np.nan
            rows.append(row)
            p, r, f1, support = precision_recall_fscore_support(folds.y, pred, labels=classes, zero_division=0)
            class_rows += [{"descriptor": kind, "classifier": clf_name, "class": c, "precision": p[i], "recall": r[i],
                            "f1": f1[i], "support": int(support[i])} for i, c in enumerate(classes)]  # fmt: skip
            confusion[(kind, clf_name)] = confusion_matrix(folds.y, pred, labels=classes)
            pred_rows.append(pd.DataFrame({"descriptor": kind, "classifier": clf_name, "path": paths, "fold": fold_of,
                                           "true": folds.y, "predicted": pred,
                                           **{f"p_{c}": proba[:, i] for i, c in enumerate(classes)}}))  # fmt: skip
    counts = pd.Series(folds.y).value_counts()
    chance = {"balanced_accuracy": 1 / len(classes), "accuracy": float(counts.max() / counts.sum()),
              "macro_f1": float(np.mean([1 / len(classes)] * len(classes))), "roc_auc": 0.5}  # fmt: skip
    return Evaluation(
        target, folds.group, classes, pd.DataFrame(rows), pd.DataFrame(fold_rows), pd.DataFrame(class_rows),
        confusion, pd.concat(pred_rows, ignore_index=True), chance, len(X), len(folds.splits), folds.dropped,
    )  # fmt: skip


FEATURE_SETS = {
    "mean": "VAE: time-averaged mean of mu per recording",
    "moments": "VAE: mixture of the frame posteriors, its mean and variance per dimension",
    "mixture": "VAE: 32 samples per recording from the mixture; probabilities averaged over samples",
    "indices": "scikit-maad temporal and spectral alpha acoustic indices, averaged over clips",
    "logmel": "mean log-mel spectrum (no learning)",
    "birdnet": "BirdNET 2.4 embeddings (1024-d per 3 s window), averaged",
}


def write_evaluation(ev: Evaluation, out: Path | str, latents: Path | str | None = None,
                     notes: dict[str, str] | None = None) -> Path:  # fmt: skip
    """metrics.csv, per_fold.csv, per_class.csv, predictions.parquet, confusion_*.csv/png, evaluation.json."""
    from ecovae import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ev.summary.to_csv(out / "metrics.csv", index=False)
    ev.per_fold.to_csv(out / "per_fold.csv", index=False)
    ev.per_class.to_csv(out / "per_class.csv", index=False)
    ev.predictions.to_parquet(out / "predictions.parquet", index=False)
    images = {}
    for (kind, clf), cm in ev.confusion.items():
        stem = f"confusion_{kind}_{clf}"
        pd.DataFrame(cm, index=ev.classes, columns=ev.classes).rename_axis("true \\ predicted").to_csv(out / f"{stem}.csv")
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        pd.DataFrame(norm, index=ev.classes, columns=ev.classes).rename_axis("true \\ predicted").to_csv(
            out / f"{stem}_normalised.csv"
        )
        plots.confusion(cm, ev.classes, f"{ev.target}: {kind} / {clf}", out / f"{stem}.png")
        images[f"{kind}/{clf}"] = f"{stem}.png"
    info = {
        "latents": str(Path(latents).resolve()) if latents else None, "target": ev.target, "group": ev.group, "classes": ev.classes, "n_recordings": ev.n_recordings,
        "n_folds": ev.n_folds, "chance": ev.chance,
        "feature_sets": {k: FEATURE_SETS.get(k, k) + (notes or {}).get(k, "") for k in ev.summary["descriptor"].unique()}, "dropped_classes": ev.dropped, "confusion_images": images,
        "best": ev.summary.sort_values("balanced_accuracy", ascending=False).iloc[0][
            ["descriptor", "classifier", "balanced_accuracy"]].to_dict(),
    }  # fmt: skip
    (out / "evaluation.json").write_text(json.dumps(info, indent=2, default=float) + "\n")
    return out
