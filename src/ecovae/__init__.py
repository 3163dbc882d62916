"""ecovae: learned representations of whole soundscapes with a convolutional VAE.

The pipeline, one module per stage: ``audio`` (recordings in) -> ``spectrogram``
(log-mel clips) -> ``model`` (the VAE) -> ``train`` -> ``encode`` (per-frame
latents to Parquet). ``simulate`` makes the built-in survey; ``cli`` sits on top.
"""

__version__ = "0.1.0"
