"""The names of what the analyses write, in one place: each writer and the report import them from here.

A run folder's own files (config, weights, metrics, manifest) are named in :mod:`ecovae.run`, their owner.
"""

from __future__ import annotations

# ecovae run --out: the pipeline's folder
RUN_FOLDER, LATENTS_FILE, EVAL_FOLDER, BASELINES_FOLDER, REPORT_FILE = (
    "run",
    "latents.parquet",
    "eval",
    "baselines",
    "report.html",
)

# an evaluation folder (ecovae evaluate --out)
METRICS_FILE, PER_FOLD_FILE, PER_CLASS_FILE, PREDICTIONS_FILE, EVALUATION_FILE = (
    "metrics.csv",
    "per_fold.csv",
    "per_class.csv",
    "predictions.parquet",
    "evaluation.json",
)
HARDWARE_FILE = "hardware.json"  # the hardware check, beside the evaluation
INTERPRETATION_FILE = "interpretation.json"  # ecovae interpret --out
NOVELTY_FOLDER, NOVELTY_SUMMARY_FILE = "novelty", "novelty.json"  # in the evaluation folder: ecovae novelty --out
DIEL_FOLDER, DIEL_FILE = "diel", "diel.json"
METHODS_FILE = "methods.json"  # beside the report
