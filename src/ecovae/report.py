"""The report: one self-contained HTML file (images embedded) and methods.json.

Everything in it is read back from the files the earlier stages wrote (the run
folder, the evaluation folder and the latents summary), so the report says
what was done, not what was meant. Text from the data (file names, labels) is
escaped by Jinja2's autoescape: a file name is never markup.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from ecovae import __version__


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _data_uri(path: Path) -> str | None:
    """The file inlined, so the report is one file to send (PNG pictures, WAV sounds)."""
    if not path.is_file():
        return None
    mime = {".wav": "audio/wav"}.get(path.suffix.lower(), "image/png")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def methods_card(run_dir: Path, eval_dir: Path, report_path: Path | None = None) -> dict[str, dict[str, str]]:
    """What a reader asks of a deep-learning study, from the run's and the evaluation's own records."""
    run = _read_json(run_dir / "run.json")
    cfg = _read_json(run_dir / "config.json")
    ev = _read_json(eval_dir / "evaluation.json")
    interp = _read_json(eval_dir / "interpretation.json")
    hw = _read_json(eval_dir / "hardware.json")
    data, model, spec, train = (
        run.get("data", {}),
        cfg.get("model", {}),
        cfg.get("spectrogram", {}),
        cfg.get("train", {}),
    )
    params = None
    if model:
        from ecovae.model import SoundscapeVAE, VAEConfig, parameter_count

        params = parameter_count(SoundscapeVAE(VAEConfig.from_dict(model)))
    versions = run.get("versions", {})
    hardware = run.get("hardware", {})
    return {
        "Data": {
            "source": str(run.get("recordings", "")),
            "labels": str(run.get("labels") or "folder layout / labels.csv"),
            "volume": f"{data.get('recordings_used', '?')} recordings, {data.get('hours', 0):.3f} h "
            f"({data.get('files_found', '?')} files found, {len(data.get('skipped', {}))} skipped)",
        },
        "Preprocessing": {
            "audio": f"downmixed to mono, resampled to {spec.get('sample_rate')} Hz ({run.get('resampler', '?')})",
            "spectrogram": f"Hann {spec.get('win_length')}, n_fft {spec.get('n_fft')}, hop {spec.get('hop_length')}; "
            f"{spec.get('n_mels')} mel bins {spec.get('f_min')}–{spec.get('f_max')} Hz; ln(max(mel, {spec.get('log_floor')}))",
            "framing": f"clips of {spec.get('clip_frames')} frames of {spec.get('frame_hops')} hops; training windows of "
            f"{cfg.get('window_frames', train.get('window_frames'))} frames",
            "normalisation": "per-mel-bin mean and standard deviation of the training recordings (stored with the weights)",
        },
        "Architecture": {
            "model": "convolutional VAE (Gibb et al. 2024): pre-processing, ResStacks, temporal framing, per-frame Gaussian bottleneck",
            "preset": str(train.get("preset", "?")),
            "settings": json.dumps(model),
            "parameters": f"{params:,}" if params else "?",
        },
        "Training": {
            "objective": f"negative ELBO: Gaussian reconstruction (sigma {model.get('decoder_sigma')}"
            f"{', learned' if model.get('learn_decoder_sigma') else ''}) + beta {model.get('beta')} x KL",
            "optimiser": f"AdamW, learning rate {train.get('learning_rate')}, weight decay {train.get('weight_decay')}, cosine decay",
            "batch size / steps": f"{train.get('batch_size')} / {run.get('global_step')}",
            "precision / devices": f"{train.get('precision')} / {run.get('trainer', {}).get('devices')}",
        },
        "Software and hardware": {
            "framework": ", ".join(f"{k} {v}" for k, v in versions.items()),
            "hardware": f"{hardware.get('processor')} ({hardware.get('cpu_count')} CPUs)"
            + (f", GPUs: {', '.join(hardware.get('gpus', []))}" if hardware.get("gpus") else ", no GPU"),
            "training time": f"{run.get('wall_time_s', 0):.0f} s over {run.get('attempts', 1)} attempt(s)",
        },
        "Randomness": {
            "seed": f"{run.get('seed')} (Lightning seed_everything: split, initialisation, sampling; evaluation folds and classifiers seeded too)",
        },
        "Splits": {
            "training": f"by recording: {len(data.get('train_recordings', []))} training, {len(data.get('val_recordings', []))} validation",
            "evaluation": f"{ev.get('n_folds', '?')}-fold stratified cross-validation grouped by {ev.get('group', '?')}"
            f" over {ev.get('n_units', ev.get('n_recordings', '?'))} units ({ev.get('unit', 'recording')})"
            if ev
            else "none",
        },
        "Evaluation": {
            "target": str(ev.get("target", "")),
            "metrics": "accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1, ROC-AUC (one-vs-rest), "
            "confusion matrices; chance level beside them; held-out negative ELBO, MSE, MAE, KL",
        },
        "Post-processing": {
            "descriptors": "; ".join(f"{k}: {v}" for k, v in ev.get("descriptors", {}).items()) or "not run",
            "feature sets": "; ".join(f"{k}: {v}" for k, v in ev.get("feature_sets", {}).items()) or "not run",
            "classifiers": "; ".join(f"{k}: {v}" for k, v in ev.get("classifiers", {}).items()) or "not run",
            "interpretation": "integrated gradients and gradient x input (Captum) of the linear score; boundary walks along the "
            "hyperplane normal; PCA and UMAP"
            if interp
            else "not run",
            "hardware correction": f"per-{hw['recorder_column']} log-mel offset removed before encoding, fitted on training folds"
            if hw
            else "not run",
        },
        "Code and outputs": {
            "code": f"ecovae {__version__} (src/ecovae: model.py, train.py, encode.py, descriptors.py, evaluate.py, interpret.py)",
            "run folder": str(run_dir.resolve()),
            "evaluation folder": str(eval_dir.resolve()),
            "report": str(report_path.resolve()) if report_path else "",
        },
    }


def write_report(
    run_dir: Path | str, eval_dir: Path | str, out: Path | str, latents_summary: Path | str | None = None
) -> Path:
    """Render report.html (self-contained) and methods.json beside it."""
    from ecovae import plots

    run_dir, eval_dir, out = Path(run_dir), Path(eval_dir), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run = _read_json(run_dir / "run.json")
    ev = _read_json(eval_dir / "evaluation.json")
    interp = _read_json(eval_dir / "interpretation.json")
    if latents_summary is None and ev.get("latents"):
        latents_summary = Path(ev["latents"]).with_name(
            Path(ev["latents"]).name.removesuffix(".parquet") + ".summary.json"
        )
    encode = _read_json(Path(latents_summary)) if latents_summary else {}

    if (run_dir / "metrics.csv").is_file():
        plots.training_curves(pd.read_csv(run_dir / "metrics.csv"), eval_dir / "training_curves.png")
    data = run.get("data", {})
    skipped = {**data.get("skipped", {}), **encode.get("skipped", {})}
    flagged = [(p, "digital silence in some frames") for p in encode.get("silent_files", [])]
    flagged += list(encode.get("truncated_files", {}).items())
    metrics = pd.read_csv(eval_dir / "metrics.csv").to_dict("records") if (eval_dir / "metrics.csv").is_file() else []
    reconstruction = interp.get("reconstruction") or {}
    methods = methods_card(run_dir, eval_dir, out)
    (out.with_name("methods.json")).write_text(json.dumps(methods, indent=2) + "\n")

    env = Environment(loader=PackageLoader("ecovae", "templates"), autoescape=select_autoescape(["html", "j2"]))
    html = env.get_template("report.html.j2").render(
        title=f"{Path(run.get('recordings', '')).name or 'survey'}" + (f", {ev['target']}" if ev.get("target") else ""),
        created=time.strftime("%Y-%m-%d %H:%M"),
        version=__version__,
        run_dir=str(run_dir),
        eval_dir=str(eval_dir),
        data={
            **data,
            "recordings": run.get("recordings", ""),
            "n_train": len(data.get("train_recordings", [])),
            "n_val": len(data.get("val_recordings", [])),
            "hours": data.get("hours", 0.0),
        },
        encode={**encode, "flagged": encode.get("flagged", 0)} if encode else None,
        skipped=sorted(skipped.items()),
        flagged=flagged,
        training={
            "steps": run.get("global_step", 0),
            "wall_time_s": run.get("wall_time_s", 0.0),
            "attempts": run.get("attempts", 1),
            "heldout_initial": ((run.get("heldout") or {}).get("initial") or {}).get("neg_elbo"),
            "heldout_final": ((run.get("heldout") or {}).get("final") or {}).get("neg_elbo"),
        },
        images={
            "training_curves": _data_uri(eval_dir / "training_curves.png"),
            "saliency": _data_uri(eval_dir / "saliency.png"),
            "boundary_walk": _data_uri(eval_dir / "boundary_walk.png"),
            "saliency_grid": _data_uri(eval_dir / "saliency_grid.png"),
            "walk_bands": _data_uri(eval_dir / "boundary_walk_bands.png"),
        },
        walk_audio=[
            {"src": _data_uri(eval_dir / name), "p": p}
            for name, p in zip(
                (interp.get("boundary_walk") or {}).get("audio", []),
                (interp.get("boundary_walk") or {}).get("probabilities", []),
                strict=False,
            )
        ],
        reconstruction=reconstruction,
        reconstruction_images=[
            {"src": _data_uri(eval_dir / im["image"]), "path": im["path"]} for im in reconstruction.get("images", [])
        ],
        evaluation=ev,
        metrics=metrics,
        confusion_images=[(name, _data_uri(eval_dir / src)) for name, src in ev.get("confusion_images", {}).items()],
        interpretation=interp,
        projection_images=[{**p, "src": _data_uri(eval_dir / p["image"])} for p in interp.get("projections", [])],
        hardware=_read_json(eval_dir / "hardware.json"),
        methods=methods,
    )
    out.write_text(html, encoding="utf-8")
    return out
