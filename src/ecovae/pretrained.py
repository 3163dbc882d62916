"""The pretrained model that ships inside the package: where it is, and what ``--model pretrained`` means.

The folder is a run folder like any other (``config.json``, ``model.safetensors``,
``calibration.safetensors``) plus ``MODEL_CARD.md`` and ``MODEL_CARD.json``: the corpus it was
trained on (sources, minutes, licences), the recipe, steps, wall time, machine and its
benchmark table. It is read from the installed package, with no network, and its weights are
the same bytes on every machine, so its digest is too.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

PRETRAINED = "pretrained"  # the name a user gives for it wherever a run folder is asked for
CARD_JSON, CARD_MD = "MODEL_CARD.json", "MODEL_CARD.md"


def pretrained_dir() -> Path:
    """The shipped model's folder inside the installed package.

    >>> (pretrained_dir() / "model.safetensors").is_file()
    True
    """
    folder = Path(str(files("ecovae") / "pretrained"))
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder}: this installation of ecovae has no pretrained weights")
    return folder


def resolve_model(model: str | Path) -> Path:
    """``'pretrained'`` is the shipped model's folder; anything else is a run folder's path."""
    return pretrained_dir() if str(model) == PRETRAINED else Path(model)


def model_card() -> dict:
    """What the shipped model was trained on and how (MODEL_CARD.json)."""
    return json.loads((pretrained_dir() / CARD_JSON).read_text())
