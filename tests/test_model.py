"""The model against the paper's layer table, docs/model.md, and the objective."""

from __future__ import annotations

import json

import pytest
import torch

from ecovae.model import SoundscapeVAE, VAEConfig, clip_from_frames, frames_from_clip, preset
from ecovae.summary import model_stages

# docs/model.md, "Layers": output C x T x F per 192-hop frame, in table order.
TABLE = [
    ("input", (1, 192, 64)),
    ("pre-processing", (32, 192, 64)),
    ("pre-processing", (32, 96, 64)),
    ("ResStack 1", (64, 48, 32)),
    ("ResStack 2", (128, 24, 16)),
    ("ResStack 3", (256, 12, 8)),
    ("ResStack 4", (512, 6, 4)),
    ("temporal framing", (512, 6, 4)),
    ("bottleneck", (1, 512, 6, 4)),
    ("decoder temporal framing", (512, 6, 4)),
    ("ResStack 4", (256, 12, 8)),
    ("ResStack 3", (128, 24, 16)),
    ("ResStack 2", (64, 48, 32)),
    ("ResStack 1", (32, 96, 64)),
    ("post-processing", (64, 96, 64)),
    ("post-processing", (32, 192, 64)),
    ("post-processing", (1, 192, 64)),
]


def test_full_model_stages_match_the_table():
    stages = model_stages(SoundscapeVAE(preset("full")), n_frames=1)
    assert [(s.group, s.shape) for s in stages] == TABLE


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_smaller_presets_keep_the_table_layout(name):
    """Same stages and time x frequency shapes as the table; only the widths and latent size differ."""
    stages = model_stages(SoundscapeVAE(preset(name)), n_frames=1)
    assert [(s.group, s.shape[-2:]) for s in stages] == [(g, shape[-2:]) for g, shape in TABLE]
    model = SoundscapeVAE(preset(name)).eval()
    with torch.no_grad():
        mu, _ = model.encode(torch.randn(1, 1, 2 * 192, 64))
    assert mu.shape == (1, 2, preset(name).latent_dim)


def test_a_clip_is_framed_into_39_frames_and_back():
    stages = model_stages(SoundscapeVAE(preset("full")), n_frames=39)
    shapes = {s.group: s.shape for s in stages}
    assert [s.shape for s in stages if s.group == "ResStack 4"][0] == (512, 234, 4)  # B x 512 x 234 x 4
    assert shapes["bottleneck"] == (39, 512, 6, 4)  # (39 B) x 512 x 6 x 4
    assert stages[-1].shape == (1, 7488, 64)


def test_full_model_latents_are_128_per_frame():
    model = SoundscapeVAE(preset("full")).eval()
    with torch.no_grad():
        mu, logvar = model.encode(torch.randn(1, 1, 3 * 192, 64))
    assert mu.shape == logvar.shape == (1, 3, 128)


def test_temporal_framing_keeps_each_frame_its_own_slice():
    x = torch.arange(2 * 3 * 12 * 4, dtype=torch.float32).reshape(2, 3, 12, 4)  # B=2, C=3, 2 frames of t=6
    frames = frames_from_clip(x, 6)
    assert frames.shape == (4, 3, 6, 4)
    assert torch.equal(frames[1], x[0, :, 6:12])  # clip 0, frame 1
    assert torch.equal(frames[2], x[1, :, 0:6])  # clip 1, frame 0
    assert torch.equal(clip_from_frames(frames, 2), x)


def test_a_frame_latent_depends_on_its_frame_more_than_on_far_frames():
    torch.manual_seed(0)
    model = SoundscapeVAE(preset("tiny")).eval()
    x = torch.randn(1, 1, 4 * 192, 64)
    with torch.no_grad():
        mu0, _ = model.encode(x)
        y = x.clone()
        y[..., 3 * 192 :, :] += 5.0  # change only the last frame
        mu1, _ = model.encode(y)
    change = (mu1 - mu0).abs().sum(-1)[0]
    assert change[3] > 0 and change[0] < change[3] * 1e-3


def test_loss_is_negative_elbo_with_separate_parts():
    torch.manual_seed(0)
    model = SoundscapeVAE(preset("tiny"))
    x = torch.randn(2, 1, 2 * 192, 64)
    out = model.loss(x)
    assert torch.isfinite(out["loss"])
    torch.testing.assert_close(out["neg_elbo"], out["recon_nll"] + out["kl"])
    assert out["kl"] >= 0
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_free_bits_leave_a_dimension_below_the_floor_unpenalised():
    x = torch.randn(2, 1, 2 * 192, 64)
    torch.manual_seed(0)
    plain = SoundscapeVAE(preset("tiny")).eval()
    floored = SoundscapeVAE(preset("tiny", free_bits=1e6)).eval()
    floored.load_state_dict(plain.state_dict())
    a, b = plain.loss(x, sample=False), floored.loss(x, sample=False)
    # the reported ELBO and KL are the same; only the training loss changes
    torch.testing.assert_close(a["neg_elbo"], b["neg_elbo"])
    torch.testing.assert_close(a["kl"], b["kl"])
    latent = preset("tiny").latent_dim
    torch.testing.assert_close(b["loss"], b["recon_nll"] + 1e6 * latent)  # every dimension under the floor
    # so the posterior's parameters get gradient from the reconstruction alone: the KL pulls nothing to the prior
    weight = floored.bottleneck.to_posterior.weight
    with_floor = torch.autograd.grad(b["loss"], weight, retain_graph=True)[0]
    recon_only = torch.autograd.grad(b["recon_nll"], weight, retain_graph=True)[0]
    with_kl = torch.autograd.grad(b["neg_elbo"], weight)[0]
    torch.testing.assert_close(with_floor, recon_only)
    assert not torch.allclose(with_kl, recon_only)


def test_logvar_has_a_floor():
    cfg = preset("tiny", logvar_floor=-4.0)
    model = SoundscapeVAE(cfg)
    h = torch.randn(8, *cfg.frame_shape) * 1e3
    _, logvar = model.bottleneck.posterior(h)
    assert logvar.min() >= -4.0


def test_group_norm_variant_and_bad_settings():
    model = SoundscapeVAE(preset("tiny", norm="group"))
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    with pytest.raises(ValueError, match="frame_hops"):
        VAEConfig(frame_hops=100)
    with pytest.raises(ValueError, match="norm"):
        VAEConfig(norm="layer")


def test_config_round_trips_through_json():
    cfg = preset("tiny", beta=0.5)
    again = VAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown"):
        VAEConfig.from_dict({**cfg.to_dict(), "n_layers": 3})
