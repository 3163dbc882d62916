"""Encoding precisions: each mode this machine runs keeps mu within the fidelity bound on real audio;
a mode that cannot run is refused with its reason; one output never mixes precisions."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ecovae import precision
from ecovae.encode import encode
from ecovae.latents import latent_columns, read_latents
from ecovae.run import CALIBRATION_FILE, load_calibration, load_model


@pytest.fixture(scope="module")
def jura(shared_data, tmp_path_factory):
    """Eight real recordings of the Jura diel series (links)."""
    folder = tmp_path_factory.mktemp("jura")
    for p in sorted((shared_data / "maad_jura_diel").iterdir())[:8]:
        (folder / p.name).symlink_to(p)
    return folder


@pytest.fixture(scope="module")
def fp32_latents(shared_run, jura, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32") / "latents.parquet"
    summary = encode(jura, shared_run[0], out, progress=False, precision="fp32")
    assert summary.precision == "fp32"
    return read_latents(out)


def worst_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def test_training_keeps_calibration_windows_from_its_recordings(shared_run):
    run, manifest = shared_run
    windows = load_calibration(run)
    model, spec = load_model(run)
    assert windows is not None and windows.ndim == 4 and windows.shape[1] == 1
    assert len(windows) == 32 and windows.shape[2] % spec.frame_hops == 0 and windows.shape[3] == spec.n_mels
    assert bool(windows.isfinite().all()) and len(np.unique(windows[:, 0, 0, 0].numpy())) > 1  # distinct windows


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_each_mode_this_machine_runs_is_within_the_bound_on_real_audio_or_refused(
    mode, shared_run, jura, fp32_latents, tmp_path
):
    if reason := precision.unsupported(mode):
        pytest.skip(f"{mode} does not run here: {reason}")
    run = shared_run[0]
    model, _ = load_model(run)
    out = tmp_path / "latents.parquet"
    if why := precision.failed(precision.check_modes(model, run)[mode]):
        # the guard (small models often fail int8): refused with the figure, and auto passes it over
        assert "cosine to fp32" in why
        with pytest.raises(ValueError, match="failed its check"):
            encode(jura, run, out, progress=False, precision=mode)
        assert not out.exists() and precision.choose("auto", model, run)[0] != mode
        return
    summary = encode(jura, run, out, progress=False, precision=mode)
    assert summary.precision == mode
    got = read_latents(out)
    assert got["path"].tolist() == fp32_latents["path"].tolist()
    cols = latent_columns("mu", model.cfg.latent_dim)
    assert worst_cosine(got[cols].to_numpy(), fp32_latents[cols].to_numpy()) >= precision.MIN_COSINE
    # the no-learning columns do not depend on the encoder's precision
    logmel = [c for c in got.columns if c.startswith("logmel_")]
    np.testing.assert_array_equal(got[logmel].to_numpy(), fp32_latents[logmel].to_numpy())


def test_int8_runs_wherever_onnx_runtime_is_installed():
    pytest.importorskip("onnxruntime")
    assert precision.unsupported("int8", "cpu") is None
    assert "on the CPU" in precision.unsupported("int8", "cuda")


def test_unsupported_modes_are_refused_with_the_reason(shared_run, monkeypatch):
    model, _ = load_model(shared_run[0])
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})  # an AVX2-only CPU
    with pytest.raises(ValueError, match="AVX512_BF16"):
        precision.choose("bf16", model, shared_run[0])
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        precision.choose("fp16", model, shared_run[0])
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # not installed
    with pytest.raises(ValueError, match=r"pip install 'ecovae\[fast\]'"):
        precision.choose("int8", model, shared_run[0])


def test_auto_takes_the_fastest_mode_that_passed_and_never_one_that_failed(shared_run, monkeypatch):
    model, _ = load_model(shared_run[0])
    checks = precision.check_modes(model, shared_run[0])
    passed = ["fp32"] + [m for m, c in checks.items() if m != "fp32" and not precision.failed(c)]
    mode, _ = precision.choose("auto", model, shared_run[0])
    assert mode in passed and checks[mode]["seconds"] == min(checks[m]["seconds"] for m in passed)
    # a bound nothing but fp32 can meet: auto falls back to fp32, an explicit mode is refused
    monkeypatch.setattr(precision, "CHECK_COSINE", 1.0 + 1e-9)
    assert precision.choose("auto", model, shared_run[0])[0] == "fp32"
    runnable = [m for m in ("bf16", "int8") if "reason" not in checks[m]]
    for mode in runnable:
        with pytest.raises(ValueError, match="failed its check"):
            precision.choose(mode, model, shared_run[0])


def test_a_run_without_calibration_windows_encodes_in_fp32(shared_run, tmp_path):
    old = tmp_path / "old_run"  # as trained before calibration windows were kept
    shutil.copytree(shared_run[0], old, ignore=shutil.ignore_patterns("checkpoints", CALIBRATION_FILE))
    model, _ = load_model(old)
    assert precision.choose("auto", model, old)[0] == "fp32"
    if precision.unsupported("int8") is None:
        with pytest.raises(ValueError, match="calibration windows"):
            precision.choose("int8", model, old)


def test_one_output_never_mixes_precisions(shared_run, jura, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "CHECK_COSINE", 0.0)  # this test is about identity, not fidelity
    other = next((m for m in ("int8", "bf16") if precision.unsupported(m) is None), None)
    if other is None:
        pytest.skip("neither bf16 nor int8 runs here")
    out = tmp_path / "latents"
    first = sorted(p.name for p in jura.iterdir())[:4]
    half = tmp_path / "half"
    half.mkdir()
    for name in first:
        (half / name).symlink_to(jura / name)
    encode(half, shared_run[0], out, progress=False, precision="fp32")
    with pytest.raises(RuntimeError, match="precision: 'fp32' there, '" + other):
        encode(jura, shared_run[0], out, progress=False, precision=other)
    # auto resumes in the output's own precision, and finishes it without duplicates
    summary = encode(jura, shared_run[0], out, progress=False, precision="auto")
    assert summary.precision == "fp32" and summary.already_done == 4 and summary.encoded == 4
    table = read_latents(out)
    assert not table.duplicated(["path", "frame_in_recording"]).any()
