"""A map of the survey's sounds: every frame's posterior mean projected to 2-D (UMAP, or PCA as the fast fallback),
computed once and kept beside the latents, keyed by what the latents are (their files' sizes and times), so a
map is recomputed only when the latents change. What ``ecovae explore`` draws (issue 24).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ecovae.files import atomic_file
from ecovae.latents import list_parts, read_latents, value_columns

METHODS = ("umap", "pca")
MAP_KEY = b"ecovae.map"
FIT_FRAMES = 50_000  # UMAP is fitted on at most this many frames (a seeded sample) and places the rest


def latents_identity(path: Path | str) -> str:
    """A short digest of what the latents are on disk: each file's name, size and modification time."""
    path = Path(path)
    files = list_parts(path) if path.is_dir() else [path]
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def map_path(latents: Path | str, method: str) -> Path:
    latents = Path(latents)
    return latents.with_name(f"{latents.name.removesuffix('.parquet')}.map_{method}.parquet")


def project(mu: np.ndarray, method: str, seed: int) -> np.ndarray:
    """(rows, 2): the rows of ``mu`` standardised and projected by UMAP or PCA."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(mu)
    if method == "pca" or len(x) < 6:  # UMAP needs a few neighbours; a handful of frames is a PCA
        return PCA(2, random_state=seed).fit_transform(x)
    import umap  # slow import (numba): only here

    rng = np.random.default_rng(seed)
    fit = np.sort(rng.choice(len(x), FIT_FRAMES, replace=False)) if len(x) > FIT_FRAMES else slice(None)
    reducer = umap.UMAP(n_neighbors=min(15, len(x) - 1), random_state=seed, n_jobs=1).fit(x[fit])
    return reducer.embedding_ if isinstance(fit, slice) else reducer.transform(x)


def latent_map(latents: Path | str, *, method: str = "umap", seed: int = 0) -> pd.DataFrame:
    """``path``, ``frame_in_recording``, ``x``, ``y`` for every frame of the latents (in their order), from the
    cache beside them when it was made from these latents with this method and seed, else computed and cached.

    >>> import tempfile, pathlib
    >>> import numpy as np, pandas as pd
    >>> latents = pathlib.Path(tempfile.mkdtemp()) / "latents.parquet"
    >>> frames = pd.DataFrame({"path": ["a.wav"] * 4, "frame_in_recording": range(4), "mu_000": [0.0, 1.0, 2.0, 3.0],
    ...                        "mu_001": [0.0, 1.0, 0.0, 1.0], "logvar_000": 0.0, "logvar_001": 0.0})
    >>> frames.to_parquet(latents)
    >>> m = latent_map(latents, method="pca")
    >>> list(m.columns), len(m), map_path(latents, "pca").is_file()
    (['path', 'frame_in_recording', 'x', 'y'], 4, True)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    cache = map_path(latents, method)
    key = {"latents": latents_identity(latents), "method": method, "seed": seed}
    if cache.is_file():
        meta = pq.read_schema(cache).metadata or {}
        if json.loads(meta.get(MAP_KEY, b"{}")) == key:
            return pq.read_table(cache).to_pandas()
    frames = read_latents(latents, left_out=("logvar_", "logmel_"))
    xy = project(frames[value_columns(frames, "vae")].to_numpy(np.float32), method, seed)
    table = frames[["path", "frame_in_recording"]].assign(x=xy[:, 0].astype(np.float32), y=xy[:, 1].astype(np.float32))
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_file(cache) as tmp:
        pq.write_table(arrow.replace_schema_metadata({MAP_KEY: json.dumps(key).encode()}), tmp)
    return table
