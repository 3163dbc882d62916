"""The soundscape VAE, module by module as in the layer table of docs/model.md.

Gibb, Eldridge, Sandom & Simpson (2024), "Towards interpretable learned
representations for ecoacoustics using variational auto-encoding".

Shapes in comments are (batch, channels, time, mel) for the default (``full``)
configuration and one 192-hop frame; a clip of 39 frames is 39 times longer in
time. The CNN sees the whole clip (its receptive field crosses frame edges);
temporal framing then cuts the feature map into one latent vector per frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VAEConfig:
    # input (docs/model.md "Input")
    n_mels: int = 64
    frame_hops: int = 192
    # widths and depth (docs/model.md "Layers")
    stem_channels: int = 32  # pre-processing
    stack_channels: tuple[int, ...] = (64, 128, 256, 512)  # ResStack 1..4
    blocks_per_stack: int = 2
    post_channels: int = 64  # post-processing 1x1 conv
    latent_dim: int = 128
    norm: str = "batch"  # "batch" or "group"
    groups: int = 8  # for group norm
    # objective (docs/model.md "Objective")
    decoder_sigma: float = 0.2
    learn_decoder_sigma: bool = False
    beta: float = 1.0
    kl_warmup_steps: int = 0
    free_bits: float = 0.0  # nats per latent dimension whose KL goes unpenalised in training (0: off, the paper)
    logvar_floor: float = -10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "stack_channels", tuple(self.stack_channels))
        scale = 2 ** len(self.stack_channels)
        if self.frame_hops % (2 * scale) or self.n_mels % scale:
            raise ValueError(
                f"frame_hops ({self.frame_hops}) must divide by {2 * scale} and n_mels "
                f"({self.n_mels}) by {scale} for {len(self.stack_channels)} ResStacks"
            )
        if self.norm not in ("batch", "group"):
            raise ValueError(f"norm must be 'batch' or 'group', not {self.norm!r}")

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(C, T, F) of one frame's feature map at the bottleneck: 512 x 6 x 4."""
        scale = 2 ** len(self.stack_channels)
        return (self.stack_channels[-1], self.frame_hops // (2 * scale), self.n_mels // scale)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stack_channels"] = list(self.stack_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model settings: {sorted(unknown)}")
        return cls(**d)


PRESETS: dict[str, VAEConfig] = {
    "full": VAEConfig(),
    # Same layout, narrow and shallow: trains in seconds on a CPU (tests, demos).
    "tiny": VAEConfig(
        stem_channels=8, stack_channels=(8, 16, 16, 32), blocks_per_stack=1, post_channels=16, latent_dim=16
    ),
    # Between the two, for a CPU with an hour: twice tiny's stem, the full model's deep widths quartered,
    # a 64-d latent. The deep stacks are cheap (small maps), so a step costs about twice tiny's.
    "small": VAEConfig(
        stem_channels=16, stack_channels=(16, 32, 64, 128), blocks_per_stack=1, post_channels=32, latent_dim=64
    ),
}


def preset(name: str, **overrides) -> VAEConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def norm_layer(cfg: VAEConfig, channels: int) -> nn.Module:
    if cfg.norm == "group":
        return nn.GroupNorm(math.gcd(cfg.groups, channels), channels)
    return nn.BatchNorm2d(channels)


class ConvNormReLU(nn.Sequential):
    def __init__(self, cfg: VAEConfig, conv: nn.Module, channels: int):
        super().__init__(conv, norm_layer(cfg, channels), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """3x3 conv, norm, ReLU, 3x3 conv, norm, identity shortcut (then ReLU, as in ResNet)."""

    def __init__(self, cfg: VAEConfig, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            norm_layer(cfg, channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            norm_layer(cfg, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class PreProcessing(nn.Module):
    """5x5 Conv + BN + ReLU; then max and average pooling x2 in time, concatenated, + 1x1 Conv."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        c = cfg.stem_channels
        self.conv = ConvNormReLU(cfg, nn.Conv2d(1, c, 5, padding=2, bias=False), c)
        self.max_pool = nn.MaxPool2d((2, 1))
        self.avg_pool = nn.AvgPool2d((2, 1))
        self.merge = nn.Conv2d(2 * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)  # (B, 32, 192, 64)
        x = torch.cat([self.max_pool(x), self.avg_pool(x)], dim=1)  # (B, 64, 96, 64)
        return self.merge(x)  # (B, 32, 96, 64)


class ResStack(nn.Module):
    """Down- (encoder) or up-sampling (decoder) block by 2 in time and mel, then residual blocks."""

    def __init__(self, cfg: VAEConfig, c_in: int, c_out: int, up: bool = False):
        super().__init__()
        resample = (nn.ConvTranspose2d if up else nn.Conv2d)(c_in, c_out, 2, stride=2, bias=False)
        self.resample = ConvNormReLU(cfg, resample, c_out)
        self.blocks = nn.Sequential(*[ResidualBlock(cfg, c_out) for _ in range(cfg.blocks_per_stack)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.resample(x))


def frames_from_clip(x: torch.Tensor, frame_t: int) -> torch.Tensor:
    """Temporal framing: (B, C, n*t, F) -> (B*n, C, t, F), frames in order within each clip."""
    b, c, t, f = x.shape
    n = t // frame_t
    x = x.reshape(b, c, n, frame_t, f)  # (B, C, n, t, F)
    return x.permute(0, 2, 1, 3, 4).reshape(b * n, c, frame_t, f)  # (B*n, C, t, F)


def clip_from_frames(x: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Decoder temporal framing: (B*n, C, t, F) -> (B, C, n*t, F)."""
    bn, c, t, f = x.shape
    x = x.reshape(bn // n_frames, n_frames, c, t, f)  # (B, n, C, t, F)
    return x.permute(0, 2, 1, 3, 4).reshape(bn // n_frames, c, n_frames * t, f)  # (B, C, n*t, F)


class Bottleneck(nn.Module):
    """Flatten -> Linear -> (mu, log var) -> sample -> Linear -> Unflatten, per frame."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        flat = math.prod(cfg.frame_shape)  # 512 * 6 * 4 = 12288
        self.to_posterior = nn.Linear(flat, 2 * cfg.latent_dim)
        self.from_latent = nn.Linear(cfg.latent_dim, flat)

    def posterior(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = self.to_posterior(h.flatten(1)).chunk(2, dim=1)  # (B*n, 128) each
        # Soft floor on log var: keeps the KL and its gradient finite for confident frames.
        floor = self.cfg.logvar_floor
        return mu, floor + F.softplus(raw - floor)

    def unflatten(self, z: torch.Tensor) -> torch.Tensor:
        return self.from_latent(z).reshape(-1, *self.cfg.frame_shape)  # (B*n, 512, 6, 4)


class PostProcessing(nn.Module):
    """1x1 Conv + BN + ReLU; 2x2 ConvTranspose (x2 in time only) + BN + ReLU; 5x5 Conv."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        c, p = cfg.stem_channels, cfg.post_channels
        self.expand = ConvNormReLU(cfg, nn.Conv2d(c, p, 1, bias=False), p)
        self.upsample = ConvNormReLU(cfg, nn.ConvTranspose2d(p, c, (2, 1), stride=(2, 1), bias=False), c)
        self.out = nn.Conv2d(c, 1, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.expand(x)  # (B, 64, 96, 64)
        x = self.upsample(x)  # (B, 32, 192, 64)
        return self.out(x)  # (B, 1, 192, 64)


class SoundscapeVAE(nn.Module):
    """Convolutional VAE with one latent Gaussian per 1.536 s frame."""

    def __init__(self, cfg: VAEConfig = VAEConfig()):
        super().__init__()
        self.cfg = cfg
        widths = (cfg.stem_channels, *cfg.stack_channels)
        self.pre = PreProcessing(cfg)
        self.encoder_stacks = nn.ModuleList(ResStack(cfg, widths[i], widths[i + 1]) for i in range(len(widths) - 1))
        self.bottleneck = Bottleneck(cfg)
        self.decoder_stacks = nn.ModuleList(
            ResStack(cfg, widths[i + 1], widths[i], up=True) for i in reversed(range(len(widths) - 1))
        )
        self.post = PostProcessing(cfg)
        # Per-mel-bin mean and spread of the training log-mel: the network works on
        # standardised input, the likelihood is on the log-mel scale itself.
        self.register_buffer("input_mean", torch.zeros(cfg.n_mels))
        self.register_buffer("input_std", torch.ones(cfg.n_mels))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(cfg.decoder_sigma)), requires_grad=cfg.learn_decoder_sigma)

    # x: (B, 1, T, F) log-mel with T a whole number of frames
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior per frame: mu and log var, each (B, n_frames, latent_dim)."""
        b, _, t, _ = x.shape
        n = t // self.cfg.frame_hops
        h = self.pre((x - self.input_mean) / self.input_std)  # (B, 32, 96n, 64)
        for stack in self.encoder_stacks:
            h = stack(h)  # ... -> (B, 512, 6n, 4)
        h = frames_from_clip(h, self.cfg.frame_shape[1])  # (B*n, 512, 6, 4)
        mu, logvar = self.bottleneck.posterior(h)  # (B*n, 128)
        return mu.reshape(b, n, -1), logvar.reshape(b, n, -1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Log-mel reconstruction (B, 1, 192n, 64) from latents (B, n_frames, latent_dim)."""
        b, n, _ = z.shape
        h = self.bottleneck.unflatten(z.reshape(b * n, -1))  # (B*n, 512, 6, 4)
        h = clip_from_frames(h, n)  # (B, 512, 6n, 4)
        for stack in self.decoder_stacks:
            h = stack(h)  # ... -> (B, 32, 96n, 64)
        return self.post(h) * self.input_std + self.input_mean  # (B, 1, 192n, 64)

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor, sample: bool = True):
        mu, logvar = self.encode(x)
        z = self.sample(mu, logvar) if sample else mu
        return self.decode(z), mu, logvar

    def loss(self, x: torch.Tensor, beta: float | None = None, sample: bool = True) -> dict[str, torch.Tensor]:
        """Negative ELBO per frame, with its parts (all averaged over frames)."""
        beta = self.cfg.beta if beta is None else beta
        recon, mu, logvar = self(x, sample=sample)
        n_frames = mu.shape[0] * mu.shape[1]
        err = recon.float() - x.float()
        # Gaussian log-likelihood with decoder sigma, summed over a frame's pixels.
        nll = gaussian_nll(err, self.log_sigma).sum() / n_frames
        kl_dims = kl_to_prior(mu, logvar).reshape(n_frames, -1).mean(0)  # each latent dimension's, per frame
        kl = kl_dims.sum()
        # free bits: a dimension's KL below the floor costs nothing, so fewer dimensions collapse to the prior
        penalised = kl_dims.clamp(min=self.cfg.free_bits).sum() if self.cfg.free_bits > 0 else kl
        return {
            "loss": nll + beta * penalised,
            "neg_elbo": nll + kl,
            "recon_nll": nll,
            "kl": kl,
            "mse": err.pow(2).mean(),
            "mae": err.abs().mean(),
        }

    def frame_neg_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Each frame's negative ELBO (nats; reconstruction at z = mu, plus KL): (B, frames)."""
        recon, mu, logvar = self(x, sample=False)
        b, frames = mu.shape[:2]
        nll = gaussian_nll(recon.float() - x.float(), self.log_sigma).reshape(b, frames, -1).sum(-1)
        return nll + kl_to_prior(mu, logvar).sum(-1)


def mean_loss(model: SoundscapeVAE, batches: Iterable[torch.Tensor]) -> tuple[dict[str, float], int]:
    """Each part of the loss per frame over ``batches`` of (B, 1, T, F) log-mel, every frame weighing the same
    (held-out scores, reconstruction metrics); with the frames counted. Empty with no frames."""
    totals: dict[str, float] = {}
    frames = 0
    for x in batches:
        n = x.shape[0] * x.shape[2] // model.cfg.frame_hops
        for k, v in model.loss(x).items():
            totals[k] = totals.get(k, 0.0) + float(v) * n
        frames += n
    return ({k: v / frames for k, v in totals.items()} if frames else {}), frames


def gaussian_nll(err: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """Elementwise negative log-likelihood of a reconstruction error under N(0, sigma^2)."""
    return 0.5 * (err / log_sigma.exp()) ** 2 + log_sigma + 0.5 * math.log(2 * math.pi)


def kl_to_prior(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise KL divergence of N(mu, exp(logvar)) from the N(0, 1) prior."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
