"""Training throughput: frames per second of the tiny and full presets, and FLOPs per frame.

Achieved FLOP/s (3 x forward FLOPs per frame: forward + backward) can be read against the encoder's
compute bound in encode_throughput.json. Random log-mel windows: throughput does not depend on the data.

    python bench/train_throughput.py [--device cuda] [--precision bf16-mixed] [--smoke]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import device_name, result_name, table, write_results

from ecovae.model import SoundscapeVAE, preset
from ecovae.summary import model_stages
from ecovae.train import train_preset


def steps_per_second(model, batch: int, frames: int, device: str, steps: int, bf16: bool) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = (torch.randn(batch, 1, frames * 192, 64) * 2 - 8).to(device)
    kind = "cuda" if device.startswith("cuda") else "cpu"

    def step():
        with torch.autocast(device_type=kind, dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(x)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    if kind == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if kind == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    ap.add_argument("--presets", nargs="+", default=["tiny", "full"])
    ap.add_argument(
        "--full-batch",
        type=int,
        default=2,
        help="windows per step for the full preset (its default 8 needs ~10 GB and minutes per step on a CPU)",
    )
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    presets = ["tiny"] if args.smoke else args.presets
    rows = []
    for name in presets:
        cfg, tcfg = preset(name), train_preset(name)
        model = SoundscapeVAE(cfg).to(args.device).train()
        stages = model_stages(SoundscapeVAE(cfg), n_frames=1)
        flops_frame = sum(s.flops for s in stages)
        encoder_flops = sum(s.flops for s in stages[: 2 + len(cfg.stack_channels) + 2])
        batch, frames = (2, 2) if args.smoke else (tcfg.batch_size, tcfg.window_frames)
        if name == "full" and not args.smoke:
            batch = args.full_batch
        steps = 2 if args.smoke else (20 if name == "tiny" else 2)
        sps = steps_per_second(model, batch, frames, args.device, steps, args.precision == "bf16-mixed")
        fps = sps * batch * frames
        rows.append(
            {
                "preset": name,
                "batch": batch,
                "window_frames": frames,
                "steps_per_s": sps,
                "frames_per_s": fps,
                "forward_gflop_per_frame": flops_frame / 1e9,
                "encoder_gflop_per_frame": encoder_flops / 1e9,
                "achieved_gflop_per_s": 3 * flops_frame * fps / 1e9,
            }
        )
    table(rows, ["preset", "batch", "window_frames", "frames_per_s", "forward_gflop_per_frame", "achieved_gflop_per_s"])
    name = result_name("train_throughput", args.smoke, args.device)
    write_results(
        name,
        {
            "device": args.device,
            "device_name": device_name(args.device),
            "precision": args.precision,
            "threads": torch.get_num_threads(),
            "rows": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
