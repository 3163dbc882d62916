"""The report: one self-contained HTML file (images embedded) and methods.json.

Everything in it is read back from the files the earlier stages wrote (the run
folder, the evaluation folder and the latents summary), so the report says
what was done, not what was meant. Text from the data (file names, labels) is
escaped by Jinja2's autoescape: a file name is never markup.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from ecovae import __version__
from ecovae.outputs import (
    DIEL_FILE,
    DIEL_FOLDER,
    EVALUATION_FILE,
    HARDWARE_FILE,
    INTERPRETATION_FILE,
    METHODS_FILE,
    METRICS_FILE,
    NOVELTY_FOLDER,
    NOVELTY_SUMMARY_FILE,
)
from ecovae.run import CONFIG_FILE, RUN_FILE
from ecovae.run import METRICS_FILE as TRAIN_METRICS_FILE


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _data_uri(path: Path) -> str | None:
    """The file inlined, so the report is one file to send (PNG pictures, WAV sounds)."""
    if not path.is_file():
        return None
    mime = {".wav": "audio/wav", ".ogg": "audio/ogg", ".jpg": "image/jpeg"}.get(path.suffix.lower(), "image/png")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


@dataclass
class AudioBudget:
    """Sound is embedded until ``bytes_left`` is spent; past it, a link to the file beside the report."""

    bytes_left: int
    report_dir: Path
    linked: int = 0

    def src(self, path: Path) -> str | None:
        if not path.is_file():
            return None
        size = path.stat().st_size
        if size > self.bytes_left:
            self.linked += 1
            return Path(os.path.relpath(path, self.report_dir)).as_posix()
        self.bytes_left -= size
        return _data_uri(path)


def _excerpts(rows: list[dict], folder: Path, budget: AudioBudget) -> list[dict]:
    """Rows with ``audio`` and ``image`` (file names in ``folder``) given what the page needs to show them."""
    return [
        {**r, "audio_src": budget.src(folder / r["audio"]), "image_src": _data_uri(folder / r["image"])} for r in rows
    ]


def _confusions(ev: dict, eval_dir: Path) -> tuple[list, list]:
    """(name, image, role) of the VAE's best and the best baseline's confusion matrices, to show; the rest, folded."""
    images = {n: _data_uri(eval_dir / src) for n, src in ev.get("confusion_images", {}).items()}
    baselines = sorted((ev.get("against") or {}).values(), key=lambda r: -r["balanced_accuracy"])
    roles = [(ev.get("vae"), "the VAE's best"), (baselines[0] if baselines else None, "the best baseline")]
    shown = []
    for row, role in roles:
        name = f"{row['features']} {row['descriptor']} / {row['classifier']}" if row else None  # evaluate's naming
        if name in images:
            shown.append((name, images.pop(name), role))
    return shown, [(n, src, "") for n, src in images.items()]


def model_origin(run_dir: Path, run: dict) -> str:
    """Where the model's weights came from, in a sentence: the shipped model, a fine-tune of one, or random."""
    from ecovae.pretrained import CARD_JSON

    def pretrained(folder: Path) -> str:
        card = _read_json(Path(folder) / CARD_JSON)
        if not card:
            return ""
        corpus = card.get("corpus", {})
        sim = corpus.get("simulated", {})
        return (
            f" (ecovae's pretrained model '{card.get('name')}': {card.get('steps', 0):,} steps on "
            f"{corpus.get('real_minutes', 0):.0f} minutes of openly licensed field recordings and "
            f"{sim.get('minutes', 0) / 60:.1f} hours of simulated worlds without this survey's species)"
        )

    if (run_dir / CARD_JSON).is_file():
        return "The model that ships with ecovae, used as it is" + pretrained(run_dir) + "."
    parent = run.get("parent")
    if parent:
        return (
            f"Fine-tuned on this survey from {parent['model']} (weights {parent['weights_digest']})"
            + pretrained(Path(parent["model"]))
            + "."
        )
    return "Trained on this survey from random weights."


def methods_card(run_dir: Path, eval_dir: Path, report_path: Path | None = None) -> dict[str, dict[str, str]]:
    """What a reader asks of a deep-learning study, from the run's and the evaluation's own records."""
    run = _read_json(run_dir / RUN_FILE)
    cfg = _read_json(run_dir / CONFIG_FILE)
    ev = _read_json(eval_dir / EVALUATION_FILE)
    interp = _read_json(eval_dir / INTERPRETATION_FILE)
    hw = _read_json(eval_dir / HARDWARE_FILE)
    novelty = _read_json(eval_dir / NOVELTY_FOLDER / NOVELTY_SUMMARY_FILE)
    return {
        **_card_model(run_dir, run, cfg),
        **_card_analysis(ev, interp, hw, novelty, data=run.get("data", {})),
        "Code and outputs": {
            "code": f"ecovae {__version__} (src/ecovae: model.py, train.py, encode.py, descriptors.py, evaluate.py, interpret.py)",
            "run folder": str(run_dir.resolve()),
            "evaluation folder": str(eval_dir.resolve()),
            "report": str(report_path.resolve()) if report_path else "",
        },
    }


def _parameters(model: dict) -> int | None:
    if not model:
        return None
    import torch

    from ecovae.model import SoundscapeVAE, VAEConfig, parameter_count

    with torch.device("meta"):  # counted, not allocated: a config is no reason to take gigabytes
        return parameter_count(SoundscapeVAE(VAEConfig.from_dict(model)))


def _card_model(run_dir: Path, run: dict, cfg: dict) -> dict[str, dict[str, str]]:
    """The methods card's sections on the data, the preprocessing, the model and its training."""
    data, model, spec, train = (
        run.get("data", {}),
        cfg.get("model", {}),
        cfg.get("spectrogram", {}),
        cfg.get("train", {}),
    )
    params, versions, hardware = _parameters(model), run.get("versions", {}), run.get("hardware", {})
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
            "initial weights": model_origin(run_dir, run),
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
    }


def _card_analysis(ev: dict, interp: dict, hw: dict, novelty: dict, *, data: dict) -> dict:
    """The methods card's sections on the splits, the evaluation and what follows it."""
    return {
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
            "interpretation": "integrated gradients (Captum) and gradient x input, both from the stretch's per-band median (its background), of the linear score; boundary walks along the "
            "hyperplane normal; PCA and UMAP"
            if interp
            else "not run",
            "novelty": f"log distance to the {novelty.get('neighbours', 16)}th nearest frame (k-nearest-neighbour density) of "
            f"each frame's features and their departure from its recording's median, standardised"
            + (f" and soft-clipped at {novelty['clip_sd']:g} sd" if novelty.get("clip_sd") else "")
            + f"; ranked by {novelty.get('ranked_by')}"
            if novelty
            else "not run",
            "hardware correction": f"per-{hw['recorder_column']} log-mel offset removed before encoding, fitted on training folds"
            if hw
            else "not run",
        },
    }


def _training(run_dir: Path, run: dict) -> dict:
    heldout = run.get("heldout") or {}
    return {
        "origin": model_origin(run_dir, run),
        "steps": run.get("global_step", 0),
        "wall_time_s": run.get("wall_time_s", 0.0),
        "attempts": run.get("attempts", 1),
        "heldout_initial": (heldout.get("initial") or {}).get("neg_elbo"),
        "heldout_final": (heldout.get("final") or {}).get("neg_elbo"),
        "window_frames": run.get("data", {}).get("window_frames", "?"),
    }


def _training_curves(run_dir: Path) -> str | None:
    """The training curves as a data URI, drawn for the page only (the evaluation folder may be read-only)."""
    from ecovae import plots

    if not (run_dir / TRAIN_METRICS_FILE).is_file():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        plots.training_curves(pd.read_csv(run_dir / TRAIN_METRICS_FILE), Path(tmp) / "training_curves.png")
        return _data_uri(Path(tmp) / "training_curves.png")


def _images(eval_dir: Path) -> dict[str, str | None]:
    names = ("saliency.jpg", "boundary_walk.jpg", "saliency_grid.png", "boundary_walk_bands.png")
    keys = ("saliency", "boundary_walk", "saliency_grid", "walk_bands")
    return {k: _data_uri(eval_dir / name) for k, name in zip(keys, names, strict=True)}


def _embedded(folder: Path, figures: list[dict]) -> list[dict]:
    """Each figure's record with its image embedded (``src``)."""
    return [{**f, "src": _data_uri(folder / f["image"])} for f in figures]


def _walk_audio(interp: dict, eval_dir: Path, budget: AudioBudget) -> list[dict]:
    walk = interp.get("boundary_walk") or {}
    sounds = zip(walk.get("audio", []), walk.get("probabilities", []), strict=False)
    return [{"src": budget.src(eval_dir / name), "p": p} for name, p in sounds]


def _novelty_and_diel(eval_dir: Path, budget: AudioBudget) -> tuple[dict, dict]:
    """The novelty summary with its excerpts and histogram, and the diel views with their images, for the page."""
    novelty = _read_json(eval_dir / NOVELTY_FOLDER / NOVELTY_SUMMARY_FILE)
    if novelty:
        novelty["listen"] = _excerpts(novelty.get("listen", []), eval_dir / NOVELTY_FOLDER, budget)
        novelty["histogram_src"] = _data_uri(eval_dir / NOVELTY_FOLDER / novelty["histogram"])
    diel = _read_json(eval_dir / DIEL_FOLDER / DIEL_FILE)
    for view in diel.get("views", []):
        view["src"] = _data_uri(eval_dir / DIEL_FOLDER / view["image"])
    return novelty, diel


EVAL_FILES = (EVALUATION_FILE, INTERPRETATION_FILE, NOVELTY_FOLDER, DIEL_FOLDER)  # what makes a folder an evaluation
AUDIO_BUDGET_MB = 8.0  # sound embedded in the report; past it, links to the files


def _check_folders(run_dir: Path, eval_dir: Path) -> None:
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.json); give the --out of 'ecovae train'")
    if not any((eval_dir / name).exists() for name in EVAL_FILES):
        raise FileNotFoundError(
            f"{eval_dir}: no evaluation, interpretation, novelty or diel outputs there; give the --out of "
            "'ecovae evaluate' or 'ecovae interpret'"
        )


def write_report(
    run_dir: Path | str,
    eval_dir: Path | str,
    out: Path | str,
    *,
    latents_summary: Path | str | None = None,
    audio_budget_mb: float = AUDIO_BUDGET_MB,
) -> Path:
    """Render report.html (self-contained up to ``audio_budget_mb`` of sound) and methods.json beside it."""
    run_dir, eval_dir, out = Path(run_dir), Path(eval_dir), Path(out)
    _check_folders(run_dir, eval_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    run = _read_json(run_dir / RUN_FILE)
    ev = _read_json(eval_dir / EVALUATION_FILE)
    interp = _read_json(eval_dir / INTERPRETATION_FILE)
    if latents_summary is None and ev.get("latents"):
        latents_summary = Path(ev["latents"]).with_name(
            Path(ev["latents"]).name.removesuffix(".parquet") + ".summary.json"
        )
    encode = _read_json(Path(latents_summary)) if latents_summary else {}
    data = run.get("data", {})
    metrics = pd.read_csv(eval_dir / METRICS_FILE).to_dict("records") if (eval_dir / METRICS_FILE).is_file() else []
    reconstruction = interp.get("reconstruction") or {}
    methods = methods_card(run_dir, eval_dir, out)
    (out.with_name(METHODS_FILE)).write_text(json.dumps(methods, indent=2) + "\n")

    budget = AudioBudget(int(audio_budget_mb * 1e6), out.parent)
    exemplars = _excerpts(interp.get("exemplars") or [], eval_dir, budget)
    novelty, diel = _novelty_and_diel(eval_dir, budget)
    shown, folded = _confusions(ev, eval_dir)
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
        skipped=sorted({**data.get("skipped", {}), **encode.get("skipped", {})}.items()),
        flagged=[(p, "digital silence in some frames") for p in encode.get("silent_files", [])]
        + list(encode.get("truncated_files", {}).items()),
        training=_training(run_dir, run),
        images={"training_curves": _training_curves(run_dir), **_images(eval_dir)},
        walk_audio=_walk_audio(interp, eval_dir, budget),
        reconstruction=reconstruction,
        reconstruction_images=_embedded(eval_dir, reconstruction.get("images", [])),
        evaluation=ev,
        metrics=metrics,
        confusion_images=shown,
        confusion_folded=folded,
        exemplars=exemplars,
        novelty=novelty,
        diel=diel,
        audio_budget={"mb": audio_budget_mb, "linked": budget.linked},
        interpretation=interp,
        projection_images=_embedded(eval_dir, interp.get("projections", [])),
        hardware=_read_json(eval_dir / HARDWARE_FILE),
        methods=methods,
    )
    out.write_text(html, encoding="utf-8")
    return out
