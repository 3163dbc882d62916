"""Training throughput per precision and memory layout, and whether bf16 trains the same model.

1. Steps per second of one training step (forward, backward, AdamW) of each preset, for each precision
   (``32-true``; ``bf16-mixed``: bf16 autocast, as Lightning runs it) and memory layout (channels-last, what
   training uses; contiguous), on random log-mel windows (speed does not depend on the data). Baseline: fp32
   channels-last, the way training runs today. FLOP/s achieved: 3 x forward FLOPs per frame.
2. ``--curve-steps`` (CPU): the tiny preset trained that many steps on ../shared/data with each precision and
   ``--seeds`` seeds; held-out negative ELBO per frame at each validation. bf16 trains the same model when its
   difference from fp32 is within the spread between fp32's own seeds.

    python bench/train_throughput.py [--device cuda] [--precisions 32-true bf16-mixed] [--curve-steps 300] [--smoke]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from common import SHARED_DATA, device_name, result_name, table, write_results

from ecovae.model import SoundscapeVAE, preset
from ecovae.summary import encoder_flops, model_stages
from ecovae.train import train, train_preset

LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def steps_per_second(model, batch: int, frames: int, device: str, steps: int, bf16: bool, layout) -> float:
    model = model.to(memory_format=layout)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = (torch.randn(batch, 1, frames * 192, 64) * 2 - 8).to(device).contiguous(memory_format=layout)
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


def throughput(args) -> list[dict]:
    rows = []
    for name in args.presets:
        cfg, tcfg = preset(name), train_preset(name)
        stages = model_stages(SoundscapeVAE(cfg), n_frames=1)
        flops_frame = sum(s.flops for s in stages)
        batch, frames = (2, 2) if args.smoke else (tcfg.batch_size, tcfg.window_frames)
        if name == "full" and not args.smoke:
            batch, frames = args.full_batch, 6
        steps = 2 if args.smoke else (20 if name == "tiny" else 2)
        base = None
        for prec in args.precisions:
            for layout_name, layout in LAYOUTS.items():
                torch.manual_seed(0)
                model = SoundscapeVAE(cfg).to(args.device).train()
                sps = steps_per_second(model, batch, frames, args.device, steps, prec == "bf16-mixed", layout)
                base = base or sps  # the first: 32-true, channels-last
                fps = sps * batch * frames
                rows.append(
                    {
                        "preset": name,
                        "precision": prec,
                        "layout": layout_name,
                        "batch": batch,
                        "window_frames": frames,
                        "steps_per_s": sps,
                        "speedup": sps / base,
                        "frames_per_s": fps,
                        "forward_gflop_per_frame": flops_frame / 1e9,
                        "encoder_gflop_per_frame": encoder_flops(model, stages) / 1e9,
                        "achieved_gflop_per_s": 3 * flops_frame * fps / 1e9,
                    }
                )
    return rows


def curves(args, work: Path) -> tuple[list[dict], dict]:
    """Held-out -ELBO per frame along training, per precision and seed (tiny preset, real recordings)."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    rows = []
    every = max(1, args.curve_steps // 6)
    for prec in args.precisions:
        for seed in args.seeds:
            run = work / f"curve_{prec}_{seed}"
            t0 = time.perf_counter()
            manifest = train(
                SHARED_DATA,
                run,
                train_preset(
                    "tiny",
                    max_steps=args.curve_steps,
                    seed=seed,
                    precision=prec,
                    val_every=every,
                    checkpoint_every=every,
                ),
                progress=False,
            )
            metrics = pd.read_csv(run / "metrics.csv")
            val = metrics.dropna(subset=["val/neg_elbo"])[["step", "val/neg_elbo"]]
            rows.append(
                {
                    "precision": prec,
                    "seed": seed,
                    "wall_s": time.perf_counter() - t0,
                    "heldout_final": manifest["heldout"]["final"]["neg_elbo"],
                    "curve": [[int(s), float(v)] for s, v in val.itertuples(index=False)],
                }
            )
    final = {(r["precision"], r["seed"]): r["heldout_final"] for r in rows}
    fp32 = [final[("32-true", s)] for s in args.seeds]
    verdict = {"fp32_seed_spread": max(fp32) - min(fp32)}
    if "bf16-mixed" in args.precisions:
        diff = max(abs(final[("bf16-mixed", s)] - final[("32-true", s)]) for s in args.seeds)
        verdict |= {"bf16_minus_fp32_max": diff, "within_noise": diff <= verdict["fp32_seed_spread"]}
        walls = {p: sum(r["wall_s"] for r in rows if r["precision"] == p) for p in args.precisions}
        verdict["bf16_wall_ratio"] = walls["bf16-mixed"] / walls["32-true"]
    return rows, verdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"], choices=["32-true", "bf16-mixed"])
    ap.add_argument("--precision", dest="precisions", action="store", type=lambda p: [p], help="one precision only")
    ap.add_argument("--presets", nargs="+", default=["tiny", "full"])
    ap.add_argument(
        "--full-batch",
        type=int,
        default=2,
        help="windows per step for the full preset (its default 8 needs ~10 GB and minutes per step on a CPU)",
    )
    ap.add_argument(
        "--curve-steps", type=int, default=None, help="tiny preset steps per precision and seed (default: 300 on a CPU)"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.smoke:
        args.presets, args.seeds = ["tiny"], [0]
        args.curve_steps = 4 if args.curve_steps is None else args.curve_steps
    if args.curve_steps is None:
        args.curve_steps = 300 if args.device == "cpu" else 0
    rows = throughput(args)
    table(
        rows,
        ["preset", "precision", "layout", "batch", "window_frames", "steps_per_s", "speedup", "achieved_gflop_per_s"],
    )
    curve_rows, verdict = ([], None)
    if args.curve_steps and args.device == "cpu":
        curve_rows, verdict = curves(args, Path(tempfile.mkdtemp(prefix="ecovae-bench-")))
        table(curve_rows, ["precision", "seed", "wall_s", "heldout_final"])
        print("held-out -ELBO, bf16 against fp32:", verdict)
    name = result_name("train_throughput", args.smoke, args.device)
    write_results(
        name,
        {
            "device": args.device,
            "device_name": device_name(args.device),
            "precisions": args.precisions,
            "threads": torch.get_num_threads(),
            "rows": rows,
            "curves": curve_rows,
            "curve_verdict": verdict,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
