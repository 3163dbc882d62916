"""The latents table: its fixed columns and the names of its feature columns.

One row per frame: the recording (``path``), its labels, where the frame sits
in time, the posterior (``mu_*``, ``logvar_*``) and the frame's mean log-mel
per band (``logmel_*``: the "no learning" baseline on the same frames, written
while encoding, so analysis never decodes the audio again for it).
"""

from __future__ import annotations

RESERVED = (
    "path",
    "start_time",
    "frame_time",
    "source_sample_rate",
    "source_channels",
    "clip_index",
    "frame_index",
    "frame_in_recording",
    "frame_offset_s",
    "silent",
)

# Per-frame feature sets: name -> (value prefix, log-variance prefix or None for point values).
FEATURE_SETS = {"vae": ("mu_", "logvar_"), "logmel": ("logmel_", None)}
BASELINE_PREFIXES = ("indices_", "birdnet_")  # per-window baseline tables (ecovae.baselines)
FEATURE_PREFIXES = ("mu_", "logvar_", "logmel_", *BASELINE_PREFIXES)


def feature_columns(prefix: str, dim: int) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(dim)]


def latent_columns(prefix: str, dim: int) -> list[str]:
    return feature_columns(f"{prefix}_", dim)


def label_column_names(columns: list[str]) -> dict[str, str]:
    """Label column -> output column (a label that clashes with a fixed column gets a ``label_`` prefix)."""
    return {c: (f"label_{c}" if c in RESERVED or c.startswith(FEATURE_PREFIXES) else c) for c in columns}


def is_feature_column(name: str) -> bool:
    return name.startswith(FEATURE_PREFIXES) and name.rsplit("_", 1)[-1].isdigit()
