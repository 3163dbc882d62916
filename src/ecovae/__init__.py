"""ecovae: learned representations of whole soundscapes with a convolutional VAE.

The pipeline, one module per stage: ``survey`` (recordings and labels in) -> ``spectrogram`` (log-mel clips)
-> ``model`` (the VAE) -> ``train`` -> ``encode`` (per-frame posteriors to Parquet) -> ``descriptors`` (units
of analysis) -> ``evaluate`` (against baselines) -> ``novelty``, ``interpret``, ``diel`` -> ``report``;
``pipeline`` runs them in order, and ``cli`` parses the command line for it.

What a notebook needs is here at the top (imported when first used, so ``import ecovae`` is instant):

>>> import ecovae
>>> "read_latents" in ecovae.__all__ and "group_units" in dir(ecovae)
True

Training and encoding are :func:`ecovae.train.train` and :func:`ecovae.encode.encode` (their modules'
names: ``ecovae.train`` is the module).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "simulate_survey": "simulate",
    "Survey": "survey",
    "open_survey": "survey",
    "pretrained_dir": "pretrained",
    "load_model": "run",
    "RunFolder": "run",
    "train_preset": "train",
    "read_latents": "latents",
    "add_labels": "latents",
    "Units": "descriptors",
    "group_units": "descriptors",
    "describe": "descriptors",
    "TimeAveraged": "descriptors",
    "MixtureMoments": "descriptors",
    "evaluate_descriptors": "evaluate",
    "RecorderOffsets": "recorder_offsets",
    "novelty_scores": "novelty",
    "Explorer": "explore",
    "open_explorer": "explore",
    "Settings": "pipeline",
    "Analysis": "pipeline",
    "Training": "pipeline",
    "Encoding": "pipeline",
    "run_pipeline": "pipeline",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:  # the module is imported on first use: the command line's --help stays instant
        return getattr(importlib.import_module(f"ecovae.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ecovae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
