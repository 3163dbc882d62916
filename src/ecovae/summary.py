"""The model's layer table with shapes, parameters and FLOPs (``ecovae model-summary``).

Walks the model stage by stage in the order of the layer table (docs/model.md) on one frame
(or a clip of ``n_frames``), so the printed shapes are the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ecovae.model import SoundscapeVAE, clip_from_frames, frames_from_clip, parameter_count


@dataclass
class Stage:
    group: str
    operation: str
    shape: tuple[int, ...]  # output, without the batch axis
    parameters: int
    flops: int


def _run(fn, *args):
    counter = FlopCounterMode(display=False)
    with counter:
        out = fn(*args)
    return out, counter.get_total_flops()


@torch.no_grad()
def model_stages(model: SoundscapeVAE, n_frames: int = 1) -> list[Stage]:
    """Each stage's output shape (C, T, F), parameters and FLOPs, for one input of n_frames."""
    cfg = model.cfg
    model = model.eval()
    x = torch.zeros(1, 1, cfg.frame_hops * n_frames, cfg.n_mels)
    stages = [Stage("input", "log-mel", tuple(x.shape[1:]), 0, flops=0)]

    def add(group, op, x, *, module, fn=None):
        out, flops = _run(fn or module, x)
        stages.append(Stage(group, op, tuple(out.shape[1:]), parameter_count(module) if module else 0, flops=flops))
        return out

    pre = model.pre
    h = add("pre-processing", "5x5 Conv + BN + ReLU", (x - model.input_mean) / model.input_std, module=pre.conv)
    h = add(
        "pre-processing",
        "Max & Avg pool (2,1), concat + 1x1 Conv",
        h,
        module=pre.merge,
        fn=lambda t: pre.merge(torch.cat([pre.max_pool(t), pre.avg_pool(t)], 1)),
    )
    for i, stack in enumerate(model.encoder_stacks, 1):
        h = add(f"ResStack {i}", f"down 2x2 conv s2 + {cfg.blocks_per_stack} x residual", h, module=stack)
    h = add("temporal framing", "clip -> frames", h, module=None, fn=lambda t: frames_from_clip(t, cfg.frame_shape[1]))
    bott = model.bottleneck

    def bottleneck(t):
        mu, _ = bott.posterior(t)
        return bott.unflatten(mu)

    h = add(
        "bottleneck",
        f"Flatten, Linear -> mu, logvar ({cfg.latent_dim}), Linear, Unflatten",
        h,
        module=bott,
        fn=bottleneck,
    )
    stages[-1].shape = (n_frames,) + stages[-1].shape  # per-frame maps, n_frames of them
    h = add("decoder temporal framing", "frames -> clip", h, module=None, fn=lambda t: clip_from_frames(t, n_frames))
    n_stacks = len(model.decoder_stacks)
    for i, stack in enumerate(model.decoder_stacks):
        h = add(f"ResStack {n_stacks - i}", f"up 2x2 convT s2 + {cfg.blocks_per_stack} x residual", h, module=stack)
    post = model.post
    h = add("post-processing", "1x1 Conv + BN + ReLU", h, module=post.expand)
    h = add("post-processing", "2x2 ConvTranspose (2,1) + BN + ReLU", h, module=post.upsample)
    add("post-processing", "5x5 Conv", h, module=post.out)
    return stages


def encoder_flops(model: SoundscapeVAE, stages: list[Stage] | None = None, n_frames: int = 1) -> int:
    """FLOPs of the encoder up to the posterior's input (pre-processing, the ResStacks), for ``n_frames``."""
    stages = stages or model_stages(model, n_frames)
    return sum(s.flops for s in stages[: 2 + len(model.encoder_stacks) + 2])


def format_summary(model: SoundscapeVAE, n_frames: int = 1) -> str:
    stages = model_stages(model, n_frames)
    enc_flops = encoder_flops(model, stages)
    lines = [f"{'group':<26}{'operation':<52}{'output C x T x F':>22}{'params':>12}{'MFLOPs':>10}"]
    for s in stages:
        shape = " x ".join(str(d) for d in s.shape)
        lines.append(f"{s.group:<26}{s.operation:<52}{shape:>22}{s.parameters:>12,}{s.flops / 1e6:>10.1f}")
    total = parameter_count(model)
    lines += [
        "",
        f"parameters: {total:,} (encoder incl. posterior {_encoder_params(model):,})",
        f"FLOPs per {n_frames}-frame input: {sum(s.flops for s in stages) / 1e9:.2f} G "
        f"(encoder to posterior: {enc_flops / 1e9:.2f} G)",
    ]
    return "\n".join(lines)


def _encoder_params(model: SoundscapeVAE) -> int:
    return (
        parameter_count(model.pre)
        + parameter_count(model.encoder_stacks)
        + parameter_count(model.bottleneck.to_posterior)
    )
