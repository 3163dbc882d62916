"""The encoder at a chosen numeric precision, checked against fp32 before it is used.

``fp32``  PyTorch, channels-last: every machine.
``bf16``  CPUs with AVX512_BF16 or AMX: the convolutions' weights and activations in bfloat16 (BatchNorm
          folded into them), channels-last; input standardisation and the posterior layer stay fp32. About
          2x fp32 there; elsewhere bf16 is emulated and slower, so it is refused. On CUDA: bf16 autocast.
``int8``  the encoder exported to ONNX and quantized statically (weights per channel, activations per
          tensor, calibrated on the run's own training windows), run by ONNX Runtime on the CPU
          (``pip install 'ecovae[fast]'``). ONNX Runtime over OpenVINO: it quantizes as well as runs, in
          one package (OpenVINO needs NNCF, or ONNX Runtime itself, to quantize); OpenVINO ran the same
          int8 model ~8% faster on our 2-core AVX-512 machine (bench/README.md).

The run folder holds calibration windows: log-mel from its training recordings (:mod:`ecovae.run`). Each
mode's mu is compared with fp32's on the half of them that int8 was not calibrated on; a mode under
:data:`CHECK_COSINE` there is not chosen by ``auto`` and is refused when asked for (small models often fail
int8: few channels average out little rounding). The check (with each mode's
speed on this machine, which ``auto`` ranks by) and the int8 model are kept in the cache, per weights,
machine and library versions, so they are made once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import platform
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ecovae.files import atomic_file
from ecovae.host import FAST_PATH_FLAGS, cpu_flags
from ecovae.logmel_cache import default_cache_dir
from ecovae.model import SoundscapeVAE
from ecovae.run import CALIBRATION_FILE, load_calibration, weights_digest
from ecovae.survey import Survey, recording_clips

log = logging.getLogger(__name__)

MODES = ("fp32", "bf16", "int8")
CHOICES = ("auto", *MODES)
MIN_COSINE = 0.999  # the bound: worst frame's mu cosine to fp32 on a survey (the benchmark also checks accuracies)
# What the check asks of a mode on its 64 held-out frames: half the error budget, since a survey's worst frame
# (of millions) is worse than the worst of 64.
CHECK_COSINE = 1 - (1 - MIN_COSINE) / 2
CHECK_VERSION = 1  # bump when the check or the int8 recipe changes: cached results are then redone

Encoder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (B, 1, T, F) -> fp32 mu, log var


def unsupported(mode: str, device: str = "cpu") -> str | None:
    """Why ``mode`` cannot run on ``device`` here, or None if it can."""
    if mode not in MODES:
        return f"unknown precision {mode!r}; choose from {', '.join(CHOICES)}"
    cuda = str(device).startswith("cuda")
    if mode == "bf16":
        if cuda:
            return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16"
        if not cpu_flags() & {"avx512_bf16", "amx_bf16"}:
            return "this CPU has neither AVX512_BF16 nor AMX: bf16 would be emulated, slower than fp32"
    if mode == "int8":
        if cuda:
            return "int8 runs on the CPU (ONNX Runtime); on a GPU use bf16"
        try:
            import onnxruntime  # noqa: F401
            import onnxruntime.quantization  # noqa: F401
        except ImportError:
            return "int8 needs ONNX Runtime: pip install 'ecovae[fast]'"
    return None


# --- the three encoders ------------------------------------------------------------------


class _Cast(nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm that follows a convolution into it (in place)."""
    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            if type(module[i]) is nn.Conv2d and isinstance(module[i + 1], nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                module[i + 1] = nn.Identity()
    return module


def encoder_only(model: SoundscapeVAE) -> SoundscapeVAE:
    """A copy of the model without its decoder, in eval mode."""
    enc = copy.copy(model)  # shallow: then replace what differs, so the original is untouched
    enc._modules = dict(model._modules)
    enc.decoder_stacks, enc.post = nn.ModuleList(), nn.Identity()
    return copy.deepcopy(enc).eval()


def torch_encoder(model: SoundscapeVAE, mode: str, device: str = "cpu") -> Encoder:
    """fp32 or bf16 in PyTorch, channels-last; returns fp32 posteriors."""
    cuda = str(device).startswith("cuda")
    net = encoder_only(model).to(device)
    if mode == "bf16" and not cuda:
        # the convolutions in bf16; standardising the input and the posterior layer stay fp32
        net = fold_batchnorm(net)
        net.pre = nn.Sequential(_Cast(torch.bfloat16), net.pre.to(torch.bfloat16))
        net.encoder_stacks.to(torch.bfloat16).append(_Cast(torch.float32))
    net = net.to(memory_format=torch.channels_last)
    autocast = mode == "bf16" and cuda

    @torch.inference_mode()
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            mu, logvar = net.encode(x)
        return mu.float(), logvar.float()

    return run


class _EncodeModule(nn.Module):
    def __init__(self, model: SoundscapeVAE):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(x)


def export_onnx(model: SoundscapeVAE, path: Path, example: torch.Tensor) -> None:
    """The encoder as ONNX (batch and time dynamic), written whole or not at all."""
    with atomic_file(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own future
        torch.onnx.export(
            _EncodeModule(encoder_only(model)),
            (example,),
            str(tmp),
            input_names=["logmel"],
            output_names=["mu", "logvar"],
            dynamic_axes={"logmel": {0: "batch", 2: "time"}, "mu": {0: "batch", 1: "frames"}},
            dynamo=False,
        )


def quantize_int8(fp32_onnx: Path, out: Path, calibration: np.ndarray) -> None:
    """Static int8 (QDQ): weights per channel (signed), activations per tensor (unsigned), ranges from
    ``calibration`` (N, 1, T, F) by min-max."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Windows(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"logmel": calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.items, None)

    pre = out.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(fp32_onnx), str(pre))
        with atomic_file(out) as tmp:
            quantize_static(
                str(pre),
                str(tmp),
                Windows(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
    finally:
        pre.unlink(missing_ok=True)


def onnx_encoder(path: Path, threads: int | None = None) -> Encoder:
    """An ONNX model of the encoder, run by ONNX Runtime on the CPU with torch's thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only
    # no busy-waiting between calls: it took a core from decoding the next clips (front end 1.5x slower)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = session.run(None, {"logmel": np.ascontiguousarray(x.cpu().numpy(), np.float32)})
        return torch.from_numpy(mu), torch.from_numpy(logvar)

    return run


# --- choosing one, with its check ------------------------------------------------------------


def cache_folder(run_dir: Path, device: str) -> Path:
    """Where this model's check and int8 model are kept: one folder per weights, machine and versions."""
    import importlib.metadata as md

    calibration = Path(run_dir) / CALIBRATION_FILE
    parts = [weights_digest(run_dir), str(device), platform.machine(), torch.__version__, str(CHECK_VERSION)]
    parts.append(str(calibration.stat().st_mtime_ns) if calibration.is_file() else "no calibration")
    parts.append(" ".join(sorted(cpu_flags() & set(FAST_PATH_FLAGS))))
    try:
        parts.append(md.version("onnxruntime"))
    except md.PackageNotFoundError:
        pass
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return default_cache_dir() / "encoders" / key


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The worst frame's cosine similarity between two sets of posteriors (..., D)."""
    return float(torch.nn.functional.cosine_similarity(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])).min())


def _timed(encoder: Encoder, x: torch.Tensor, repeats: int = 3) -> tuple[torch.Tensor, float]:
    """mu, and the best of ``repeats`` timings after a first call (allocation and kernel choice)."""
    encoder(x)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mu, _ = encoder(x)
        best = min(best, time.perf_counter() - t0)
    return mu, best


def check_modes(model: SoundscapeVAE, run_dir: Path, device: str = "cpu") -> dict[str, dict]:
    """Each mode this machine runs: its worst-frame mu cosine to fp32 and its speed, on the run's
    calibration windows (int8 calibrated on one half, every mode checked on the other).

    Cached per weights and machine. A mode that cannot run says why (``reason``)."""
    folder = cache_folder(run_dir, device)
    path = folder / "check.json"
    if path.is_file():
        return json.loads(path.read_text())
    windows = load_calibration(run_dir)
    results: dict[str, dict] = {}
    if windows is None:
        held_out = None
        log.info("%s has no calibration windows: only fp32 is checked", run_dir)
    else:
        calib, held_out = windows[: len(windows) // 2], windows[len(windows) // 2 :]
        # one batch of frames in a row, as encoding sees a clip
        held_out = held_out.permute(1, 0, 2, 3).reshape(1, 1, -1, windows.shape[-1])
    reference, seconds = _timed(torch_encoder(model, "fp32", device), held_out) if held_out is not None else (None, 0)
    results["fp32"] = {"cosine": 1.0, "seconds": seconds}
    for mode in ("bf16", "int8"):
        reason = unsupported(mode, device) or (None if held_out is not None else "the run has no calibration windows")
        if reason:
            results[mode] = {"reason": reason}
            continue
        try:
            enc = mode_encoder(model, run_dir, mode, device=device, calibration=calib)
            mu, seconds = _timed(enc, held_out)
            results[mode] = {"cosine": cosine(mu, reference), "seconds": seconds}
        except Exception as e:  # a mode that fails to build is reported, and fp32 goes on
            log.warning("%s encoder could not be built: %s", mode, e)
            results[mode] = {"reason": f"{type(e).__name__}: {e}"}
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    return results


def mode_encoder(
    model: SoundscapeVAE, run_dir: Path, mode: str, *, device: str = "cpu", calibration: torch.Tensor | None = None
) -> Encoder:
    """The encoder of ``mode`` (no check: see :func:`choose`). int8 is quantized once per weights and machine,
    on ``calibration`` (default: the first half of the run's calibration windows)."""
    if mode in ("fp32", "bf16"):
        return torch_encoder(model, mode, device)
    folder = cache_folder(Path(run_dir), device)
    int8 = folder / "encoder.int8.onnx"
    if not int8.is_file():
        if calibration is None:
            windows = load_calibration(run_dir)
            if windows is None:
                raise ValueError(
                    f"{run_dir} has no calibration windows (trained before runs kept them): int8 needs them"
                )
            calibration = windows[: len(windows) // 2]
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = folder / "encoder.onnx"
        t0 = time.perf_counter()
        export_onnx(model, fp32, calibration[:1])  # a copy is exported: the model is left as it is
        quantize_int8(fp32, int8, calibration.numpy())
        log.info("int8 encoder quantized in %.1f s: %s", time.perf_counter() - t0, int8)
    return onnx_encoder(int8)


def failed(check: dict) -> str | None:
    """Why a mode's check (from :func:`check_modes`) rules it out, or None if it passed."""
    if "reason" in check:
        return check["reason"]
    if check["cosine"] < CHECK_COSINE:
        return f"mu cosine to fp32 {check['cosine']:.5f} < {CHECK_COSINE} on the run's held-out calibration windows"
    return None


SURVEY_CHECK_FILES = 12  # recordings spread over the survey whose first clip auto's choice is confirmed on


def confirm_on_survey(
    mode: str, encoder: Encoder, model: SoundscapeVAE, *, survey: Survey, device: str = "cpu"
) -> tuple[str, Encoder]:
    """``auto``'s choice checked again on the survey being encoded: the first clip of up to
    :data:`SURVEY_CHECK_FILES` recordings spread over it, each frame's mu against fp32's. A mode whose worst
    frame falls below :data:`MIN_COSINE` there gives way to fp32 (the run's calibration windows are few)."""
    if mode == "fp32" or not survey.files:
        return mode, encoder
    step = max(1, len(survey.files) // SURVEY_CHECK_FILES)
    clips = []
    for _, first in survey.read(partial(recording_clips, spec=survey.spec, max_clips=1), survey.files[::step]):
        clips.append(first[0].logmel.unsqueeze(0).unsqueeze(0))
        if len(clips) >= SURVEY_CHECK_FILES:
            break
    if not clips:
        return mode, encoder
    reference = torch_encoder(model, "fp32", device)
    worst = min(cosine(encoder(x)[0], reference(x)[0]) for x in clips)
    if worst < MIN_COSINE:
        log.warning(
            "precision auto: %s gave mu cosine %.5f to fp32 on the survey's own frames (< %s): encoding in fp32",
            mode,
            worst,
            MIN_COSINE,
        )
        return "fp32", reference
    log.info("precision auto: %s confirmed on %d of the survey's clips (worst cosine %.5f)", mode, len(clips), worst)
    return mode, encoder


def _said(check: dict) -> str:
    return failed(check) or f"cosine {check['cosine']:.5f}, {check['seconds']:.3f} s"


def choose(
    precision: str, model: SoundscapeVAE, run_dir: Path | str, *, device: str = "cpu", recorded: str | None = None
) -> tuple[str, Encoder]:
    """(mode, encoder) for ``precision``: ``auto`` takes ``recorded`` (the precision an existing output was
    encoded in) if given, else the fastest mode that passed its check here. An explicit mode that cannot
    run, or that failed its check, is refused with the reason."""
    run_dir = Path(run_dir)
    if precision not in CHOICES:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(CHOICES)}")
    origin = ""
    if precision == "auto" and recorded is not None:  # one output never mixes precisions
        precision, origin = recorded, f" (the output was encoded in {recorded}: one output never mixes precisions)"
    if precision == "fp32":
        return "fp32", torch_encoder(model, "fp32", device)
    if precision != "auto" and (reason := unsupported(precision, device)):
        raise ValueError(f"precision {precision} is not available here{origin}: {reason}")
    checks = check_modes(model, run_dir, device)
    if precision == "auto":
        passed = ["fp32"] + [m for m, r in checks.items() if m != "fp32" and not failed(r)]  # fp32 is the reference
        precision = min(passed, key=lambda m: checks[m]["seconds"])
        log.info("precision auto: %s (%s)", precision, "; ".join(f"{m}: {_said(r)}" for m, r in checks.items()))
    elif reason := failed(checks[precision]):
        raise ValueError(f"precision {precision}{origin} failed its check on {run_dir}: {reason}")
    return precision, mode_encoder(model, run_dir, precision, device=device)
