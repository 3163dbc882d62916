"""The pipeline: train, encode, evaluate against baselines, rank novelty, interpret, diel views, report.

One survey is opened once (:func:`ecovae.survey.open_survey`) and handed to every stage; each stage is a
function of (survey, settings, output folder) and leaves its files there, so :func:`run_pipeline` run again
resumes: training from its last checkpoint, encoding from its last committed part, the baselines and the
negative ELBO from their caches. ``ecovae run``, ``ecovae quickstart`` and the representation benchmark all
call it. Stages print one line each as they start (``[train] ...``), as the command line shows them.

>>> from ecovae.pipeline import Settings, Training
>>> Settings(target="site", training=Training(preset="tiny", max_steps=100)).training.max_steps
100
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ecovae.outputs import (
    BASELINES_FOLDER,
    DIEL_FOLDER,
    EVAL_FOLDER,
    HARDWARE_FILE,
    LATENTS_FILE,
    NOVELTY_FOLDER,
    REPORT_FILE,
    RUN_FOLDER,
)
from ecovae.run import CONFIG_FILE, RunFolder, load_model
from ecovae.spectrogram import SpectrogramConfig
from ecovae.survey import Survey, as_survey


@dataclass(frozen=True, kw_only=True)
class Training:
    """What the pipeline trains: a preset and steps, or None for what fits ``budget_minutes`` here.

    >>> Training(device="cuda:1").accelerator, Training(device="cpu").encode_device
    ('gpu', 'cpu')
    """

    preset: str | None = None
    max_steps: int | None = None
    budget_minutes: float = 20.0
    seed: int = 0
    device: str = "auto"  # where to train and encode: auto (a GPU if there is one), cpu, cuda
    precision: str | None = None  # Lightning's (None: the preset's, 32-true)
    model: Path | None = None  # a model used as it is: nothing trained
    init: Path | None = None  # a model whose weights training starts from (fine-tuning)

    @property
    def accelerator(self) -> str:
        return {"auto": "auto", "cpu": "cpu"}.get(self.device, "gpu")

    @property
    def encode_device(self) -> str:
        import torch

        return ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """How the evaluation is cut: units, time windows, fold groups; what it skips for speed.

    >>> Analysis(unit="site,recorder", window="1D").unit_name
    'site,recorder per 1D'
    """

    unit: str | None = None  # label columns whose values make one unit (default: each recording)
    window: str | None = None  # also cut units by time: a pandas frequency (1D, 6h)
    group: str | None = None  # label column whose values never straddle a split (default: the unit)
    folds: int = 5  # cross-validation folds (fewer if a class has fewer groups)
    baselines: str = "indices,logmel,birdnet"  # feature sets scored beside the VAE's
    indices_seconds: float | None = None  # the acoustic indices on each recording's first seconds only
    novelty_features: tuple[str, ...] = ("logmel", "vae")  # scored for novelty; the first ranks
    novelty_top: int = 50  # frames in the novelty top list
    novelty_elbo: bool = False  # also rank frames by negative ELBO (a decoder pass over the survey)

    @property
    def unit_name(self) -> str:
        from ecovae.descriptors import parse_unit

        name = ",".join(parse_unit(self.unit)) or "recording"
        return f"{name} per {self.window}" if self.window else name


@dataclass(frozen=True, kw_only=True)
class Encoding:
    """How the survey is encoded (:func:`ecovae.encode.encode`); ``device`` None: the training's.

    >>> Settings(encoding=Encoding(precision="int8")).encoding.precision
    'int8'
    """

    precision: str = "auto"  # the encoder's (ecovae.precision)
    device: str | None = None
    batch_size: int | None = None
    workers: int | None = None
    threads: int | None = None
    engine: str = "local"
    address: str | None = None
    correct_hardware: str | None = None  # the recorder label column whose log-mel offsets are removed first


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a pipeline run is told: what to classify, how to cut it, what to train and how to encode.

    >>> Settings(target="site", training=Training(preset="tiny", max_steps=100)).training.max_steps
    100
    """

    target: str | None = None  # the label column to classify
    recorder: str | None = None  # the recorder label column: also run the hardware check
    analysis: Analysis = field(default_factory=Analysis)
    training: Training = field(default_factory=Training)
    encoding: Encoding = field(default_factory=Encoding)
    progress: bool = True


def say(line: str) -> None:
    """A stage's line, as the command line prints it."""
    print(line, flush=True)


# --------------------------------------------------------------------------- training


def training_config(
    *, run_dir: Path, preset: str | None, given: dict, budget_minutes: float, init: Path | None, resume: bool
):
    """The settings a run trains with, said before it starts: a resumed run's own, a fine-tune's (its parent's
    preset and recipe, the steps that fit the budget), or a new run's (the preset and steps that fit here)."""
    from ecovae.train import fine_tune_settings, plan_training, train_preset

    given = dict(given)
    if resume:
        preset = resumed_preset(run_dir, preset, given)
    elif init is not None:
        settings = fine_tune_settings(init)
        if preset is not None and preset != settings["preset"]:
            raise ValueError(f"--init {init} is a '{settings['preset']}' model; --preset {preset} cannot start from it")
        plan = plan_training(
            budget_minutes,
            preset_name=settings["preset"],
            max_steps=given.get("max_steps"),
            accelerator=given.get("accelerator") or "auto",
            fit_budget=True,
        )
        say(f"[plan] fine-tuning {init}: {plan.describe()}; budget {budget_minutes:g} min")
        preset = plan.preset
        given = {**settings, **{k: v for k, v in given.items() if v is not None}, "max_steps": plan.max_steps}
    else:
        accelerator = given.get("accelerator") or "auto"
        plan = plan_training(
            budget_minutes, preset_name=preset, max_steps=given.get("max_steps"), accelerator=accelerator
        )
        over = plan.minutes > budget_minutes * 1.1
        say(
            f"[plan] {plan.describe()}"
            + (f"; over the {budget_minutes:g}-minute budget" if over else f"; budget {budget_minutes:g} min")
            + ("" if preset else " (the preset that fits it here; --preset and --max-steps choose)")
        )
        preset, given["max_steps"] = plan.preset, plan.max_steps
    given.pop("preset", None)
    return train_preset(preset, **{k: v for k, v in given.items() if v is not None})


def resumed_preset(run_dir: Path, preset: str | None, given: dict) -> str:
    """A resumed run keeps its settings: an option given that would change one of them is refused, not
    ignored; ``given`` gets the steps it was planned for unless told otherwise."""
    from ecovae.train import RESUMABLE

    config = run_dir / CONFIG_FILE
    if not config.is_file():
        raise ValueError(f"{run_dir} holds no run to resume (no config.json); leave out --resume to start one")
    saved = json.loads(config.read_text())["train"]
    changed = [
        f"--{k.replace('_', '-')} {v} (the run has {saved.get(k)})"
        for k, v in {**given, "preset": preset}.items()
        if v is not None and k not in RESUMABLE and k in saved and saved[k] != v
    ]
    if changed:
        may = ", ".join("--" + k.replace("_", "-") for k in RESUMABLE if k != "log_every")
        raise ValueError(
            f"a resumed run keeps its settings, but {', '.join(changed)} was given; only {may} may change. "
            "Start a new --out to change it"
        )
    if given.get("max_steps") is None:  # to the steps it was planned for, unless told otherwise
        given["max_steps"] = saved.get("max_steps")
    return saved.get("preset", "full")


def training_lines(run_dir: Path, manifest: dict) -> list[str]:
    data, held = manifest["data"], manifest["heldout"]
    lines = [
        f"trained {manifest['global_step']} steps in {manifest['wall_time_s']:.0f} s on "
        f"{data['recordings_used']} recordings ({data['hours']:.2f} h); skipped {len(data['skipped'])} files"
    ]
    lines += [f"  skipped {rel}: {reason}" for rel, reason in data["skipped"].items()]
    if held.get("initial") and held.get("final"):
        lines.append(
            f"held-out negative ELBO per frame: {held['initial']['neg_elbo']:.1f} -> {held['final']['neg_elbo']:.1f}"
            f" (MSE {held['final']['mse']:.3f}, KL {held['final']['kl']:.1f})"
        )
    lines.append(f"run folder: {run_dir}/ (model.safetensors, config.json, metrics.csv, run.json)")
    return lines


def train_stage(survey: Survey, settings: Settings, out: Path) -> Path:
    """The model the later stages use: trained (or resumed) in ``out/run``, or ``--model`` as it is."""
    from ecovae.train import train

    training = settings.training
    if training.model is not None:
        say(f"[model] {training.model}/ as it is (nothing trained)")
        return training.model
    run_dir = out / RUN_FOLDER
    resume = any((run_dir / "checkpoints").glob("*.ckpt"))
    say(f"[train] {run_dir}/" + (" (resuming)" if resume else ""))
    given = {"max_steps": training.max_steps, "seed": training.seed, "accelerator": training.accelerator}
    given["precision"] = training.precision
    tcfg = training_config(
        run_dir=run_dir,
        preset=training.preset,
        given=given,
        budget_minutes=training.budget_minutes,
        init=training.init,
        resume=resume,
    )
    init = training.init if not resume else None
    manifest = train(survey, run_dir, tcfg, resume=resume, progress=settings.progress, init=init)
    say("\n".join(training_lines(run_dir, manifest)))
    return run_dir


# --------------------------------------------------------------------------- encoding and evaluation


def encode_stage(survey: Survey, settings: Settings, out: Path, *, run_dir: Path):
    """Every recording's per-frame posteriors in ``out`` (a .parquet file or a dataset folder; resumed), with the
    recorder correction if asked (the output's own offsets, or fitted on the survey); returns the summary."""
    from ecovae.encode import encode, recorded_correction
    from ecovae.recorder_offsets import fit_survey_offsets

    e = settings.encoding
    say(f"[encode] {out}")
    column, offsets = recorded_correction(out) if e.correct_hardware else (None, None)
    if e.correct_hardware:
        own = column == e.correct_hardware and offsets
        offsets = offsets if own else fit_survey_offsets(survey, e.correct_hardware).offsets_
        whose = " the output's own" if own else ""
        say(f"hardware correction by {e.correct_hardware}:{whose} offsets for {sorted(offsets)}")
    summary = encode(
        survey,
        run_dir,
        out,
        batch_size=e.batch_size,
        device=e.device or settings.training.encode_device,
        progress=settings.progress,
        offsets=offsets,
        offset_column=e.correct_hardware,
        workers=e.workers,
        threads=e.threads,
        engine=e.engine,
        address=e.address,
        precision=e.precision,
    )
    say("\n".join(summary.lines()))
    return summary


def baseline_features(
    survey: Survey | None, frames: pd.DataFrame, *, analysis: Analysis, cache: Path, progress: bool = True
) -> dict:
    """The baselines' units (the same units as the VAE's), their windows cached in ``cache``."""
    from ecovae.baselines import baseline_sets

    kinds = [k.strip() for k in analysis.baselines.split(",") if k.strip()]
    if not kinds:
        return {}
    seconds = analysis.indices_seconds
    limit = f" (indices on the first {seconds:g} s of each recording)" if seconds else ""
    say(f"baseline features: {', '.join(kinds)}{limit}; cached in {cache}/")
    return baseline_sets(
        frames,
        kinds,
        survey,
        cache=cache,
        unit=analysis.unit,
        window=analysis.window,
        indices_seconds=seconds,
        progress=progress,
    )


def evaluation_lines(ev) -> list[str]:
    from ecovae.evaluate import verdict

    lines = [
        f"{ev.target}: {ev.n_units} units ({ev.unit}), {ev.n_folds} folds grouped by {ev.group}; "
        f"chance balanced accuracy {ev.chance['balanced_accuracy']:.3f}"
    ]
    lines += [
        f"  {r.features:>8} {r.descriptor:>8} {r.classifier:>6}: balanced accuracy {r.balanced_accuracy:.3f}"
        f" (fold sd {r.balanced_accuracy_fold_sd:.3f})  macro-F1 {r.macro_f1:.3f}  ROC-AUC {r.roc_auc:.3f}"
        for r in ev.summary.itertuples()
    ]
    if ev.unlabelled:
        more = f", ... ({len(ev.unlabelled) - 5} more)" if len(ev.unlabelled) > 5 else ""
        lines.append(
            f"  left out {len(ev.unlabelled)} units with no {ev.target!r} label: {', '.join(ev.unlabelled[:5])}{more}"
        )
    if ev.dropped:
        lines.append(f"  left out classes with fewer than 2 {ev.group} groups: {', '.join(map(str, ev.dropped))}")
    v = verdict(ev.summary)
    b = v["best"]
    lines.append(f"best: {b['features']} {b['descriptor']} / {b['classifier']} {b['balanced_accuracy']:.3f}")
    lines += [f"  VAE best vs {k} best: {a['difference']:+.3f}" for k, a in v.get("against", {}).items()]
    return lines


def evaluate_stage(
    survey: Survey | None, settings: Settings, out: Path, *, frames: pd.DataFrame, latents: Path, cache: Path
):
    """Cross-validated classification of the units from the VAE's and the baselines' descriptors (the baselines'
    windows cached in ``cache``), written to ``out`` (metrics.csv and the rest); returns the evaluation. Without
    a survey, only the baselines the latents hold (log-mel)."""
    from ecovae.descriptors import group_units
    from ecovae.evaluate import evaluate_descriptors, write_evaluation

    a = settings.analysis
    if not settings.target:
        raise ValueError("the evaluation needs a target: the label column to classify")
    say(f"[evaluate] {out}/")
    features = baseline_features(survey, frames, analysis=a, cache=cache, progress=settings.progress)
    ev = evaluate_descriptors(
        group_units(frames, a.unit, a.window),
        settings.target,
        a.group,
        n_splits=a.folds,
        seed=settings.training.seed,
        features=features,
        unit=a.unit_name,
    )
    notes = {"indices": f" (first {a.indices_seconds:g} s of each recording)"} if a.indices_seconds else None
    write_evaluation(ev, out, latents, notes=notes)
    say("\n".join(evaluation_lines(ev)))
    say(f"evaluation in {out}/ (metrics.csv, per_fold.csv, per_class.csv, confusion_*.png, predictions.parquet)")
    return ev


def hardware_stage(survey: Survey, settings: Settings, out: Path, *, run_dir: Path) -> dict:
    """Can the recorder be told from the latents, with and without its correction? ``out/hardware.json``."""
    from ecovae.hardware import hardware_check

    recorder, target = settings.recorder, settings.target
    say(f"[hardware] can {recorder} be told from the latents, with and without its correction? (per recording)")
    model, spec = load_model(run_dir)
    result = hardware_check(
        model,
        spec,
        survey,
        recorder=recorder,
        target=target,
        seed=settings.training.seed,
        progress=settings.progress,
    )
    (out / HARDWARE_FILE).write_text(json.dumps(result, indent=2) + "\n")
    r, t = result["recorder_balanced_accuracy"], result["target_balanced_accuracy"]
    say(
        f"hardware check: {recorder} predictable at {r['without']:.3f} -> {r['with']:.3f} with correction; "
        f"{target} {t['without']:.3f} -> {t['with']:.3f}"
    )
    return result


# --------------------------------------------------------------------------- what the latents show


def novelty_stage(
    survey: Survey, settings: Settings, out: Path, *, frames: pd.DataFrame, run_dir: Path | None = None
) -> dict:
    """The survey's most unusual frames, ranked, with excerpts to hear, in ``out``; with ``run_dir`` and
    ``novelty_elbo``, each frame's negative ELBO under that model too."""
    from ecovae.novelty import TOP_FILE, rank_survey

    a = settings.analysis
    say(f"[novelty] {out}/")
    if a.novelty_elbo and run_dir is None:
        raise ValueError("the negative ELBO needs a model (--model RUN: the decoder)")
    summary = rank_survey(
        frames,
        survey,
        out=out,
        features=a.novelty_features,
        top=a.novelty_top,
        elbo_model=load_model(run_dir)[0] if a.novelty_elbo else None,
        seed=settings.training.seed,
    )
    say(
        f"{summary['frames']} frames scored ({summary['silent_frames']} silent, unranked), ranked by "
        f"{summary['ranked_by']}; top {a.novelty_top} in {out / TOP_FILE}"
    )
    for e in summary.get("events") or []:
        where = f"{e['path']} at {e['start_s']:.1f}-{e['end_s']:.1f} s"
        say(f"  known event {e['kind']} in {where}: best rank {e['best_rank']}")
    return summary


def interpret_stage(
    survey: Survey,
    settings: Settings,
    out: Path,
    *,
    frames: pd.DataFrame,
    run_dir: Path,
    novelty: Path | None = None,
    recording: str | None = None,
    classes: tuple[str, str] | None = None,
) -> dict:
    """Reconstructions, saliency (on ``recording`` if given), the boundary walk (between ``classes``, default the
    two commonest), exemplars (never among the unusual frames of ``novelty``, a novelty folder) and projections."""
    from ecovae.descriptors import group_units
    from ecovae.interpret import interpret
    from ecovae.novelty import unusual_frames

    say(f"[interpret] {out}/")
    a = settings.analysis
    info = interpret(
        group_units(frames, a.unit, a.window),
        load_model(run_dir)[0],
        recordings=survey,
        target=settings.target,
        out=out,
        run_info=RunFolder(run_dir).manifest,
        recording=recording,
        classes=classes,
        seed=settings.training.seed,
        frames=frames,
        unusual=unusual_frames(novelty) if novelty is not None else None,
    )
    walk = info["boundary_walk"]
    say(f"boundary walk {walk['from']} -> {walk['to']}: p = " + " ".join(f"{p:.2f}" for p in walk["probabilities"]))
    say(f"figures in {out}/ (saliency.jpg, boundary_walk.jpg, reconstruction_*.jpg, projection_*.png, exemplars/)")
    return info


def diel_stage(settings: Settings, out: Path, *, frames: pd.DataFrame) -> dict | None:
    """Days at a glance per site, where the frames have times; None where they do not."""
    from ecovae.diel import diel_views, write_diel

    if not frames["frame_time"].notna().any():
        return None
    say(f"[diel] {out / DIEL_FOLDER}/")
    by = "site" if "site" in frames.columns else None  # when, where: never split by what is predicted
    return write_diel(*diel_views(frames, by=by, seed=settings.training.seed), out / DIEL_FOLDER)


# --------------------------------------------------------------------------- all of it


def survey_of(*, model: Path | None, recordings: Path | None, labels: Path | None = None) -> Survey:
    """A single stage's survey, opened once: ``recordings``, else the folder ``model`` was trained on, read with
    the model's spectrogram settings."""
    from ecovae.survey import open_survey

    spec = load_model(model)[1] if model is not None else None
    return open_survey(recordings or RunFolder(model).recordings(), labels, spec)


def survey_spec(training: Training) -> SpectrogramConfig:
    """The spectrogram settings the run's model reads audio with: a given model's or parent's, else training's."""
    given = training.model or training.init
    return load_model(given)[1] if given is not None else SpectrogramConfig()


def run_pipeline(recordings: Survey | Path | str, *, out: Path, settings: Settings, labels_csv: Path | None = None):
    """Train (or take ``settings.training.model``), encode, evaluate, check the hardware, rank novelty, interpret,
    draw the diel views and write ``out/report.html``; returns its path. Run again, it resumes.

    ``recordings``: a survey already open, or its folder (labelled by ``labels_csv``, its labels.csv or its
    layout), opened here once for every stage. Stops with :class:`ecovae.train.TrainingStopped` if training is
    interrupted (a checkpoint is saved: run it again).

    >>> import tempfile, pathlib
    >>> from ecovae import simulate_survey
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "survey"
    >>> labels = simulate_survey(folder, n_sites=2, hours=(6.0, 18.0), duration_s=6.0)  # 8 recordings
    >>> from ecovae import pretrained_dir, Settings, Training, Analysis, run_pipeline
    >>> settings = Settings(target="site", training=Training(model=pretrained_dir(), device="cpu"),
    ...                     analysis=Analysis(baselines="logmel"), progress=False)
    >>> report = run_pipeline(folder, out=folder.parent / "run", settings=settings)  # doctest: +ELLIPSIS
    [model] ...
    >>> report.name, (folder.parent / "run" / "latents.parquet").is_file()
    ('report.html', True)
    """
    from ecovae.latents import read_latents
    from ecovae.report import write_report

    out = Path(out)
    survey = as_survey(recordings, labels_csv, survey_spec(settings.training))
    run_dir = train_stage(survey, settings, out)
    survey = survey.with_spec(load_model(run_dir)[1])
    latents, eval_dir = out / LATENTS_FILE, out / EVAL_FOLDER
    encode_stage(survey, settings, latents, run_dir=run_dir)
    frames = read_latents(latents)
    evaluate_stage(survey, settings, eval_dir, frames=frames, latents=latents, cache=out / BASELINES_FOLDER)
    if settings.recorder:
        hardware_stage(survey, settings, eval_dir, run_dir=run_dir)
    novelty = eval_dir / NOVELTY_FOLDER  # first: the exemplars of a class are never the survey's oddities
    novelty_stage(survey, settings, novelty, frames=frames, run_dir=run_dir)
    interpret_stage(survey, settings, eval_dir, frames=frames, run_dir=run_dir, novelty=novelty)
    diel_stage(settings, eval_dir, frames=frames)
    path = write_report(run_dir, eval_dir, out / REPORT_FILE)
    say(f"[report] {path}")
    return path


# --------------------------------------------------------------------------- the quickstart

QUICKSTART_FINE_TUNE_STEPS = 300  # of the shipped model on the survey: a minute or two on 2 cores
QUICKSTART_SCRATCH_STEPS = 1000  # of a tiny model from random weights (--from-scratch)
QUICKSTART_INDICES_SECONDS = 3.0  # the indices (slow) on each recording's first seconds only: a demo of minutes


@dataclass(frozen=True, kw_only=True)
class Quickstart:
    """The demo: a simulated survey of several days (``survey``: :func:`ecovae.simulate.simulate_survey`'s
    settings), the shipped model fine-tuned on it for ``steps`` (or a tiny one trained from scratch)."""

    steps: int | None = None
    from_scratch: bool = False
    seed: int = 0
    survey: dict = field(default_factory=dict)


def run_quickstart(out: Path, *, quickstart: Quickstart, progress: bool = True) -> Path:
    """Simulate the survey (once) in ``out/survey`` and run the whole pipeline on it; returns the report's path.

    Sites are compared over days, as ecologists compare them: one unit per site, recorder and day. What a demo
    of minutes spends its time on (bench/representation.py measured the choices): training steps buy
    representation quality; the acoustic indices (slow) see 3 s of each recording.
    """
    from ecovae.pretrained import pretrained_dir
    from ecovae.simulate import simulate_survey

    t0, q, survey = time.time(), quickstart, Path(out) / "survey"
    if (survey / "labels.csv").is_file():
        say(f"[simulate] survey already in {survey}/")
    else:
        s = {"n_sites": 4, "habitats": 2, "days": 3, "duration_s": 12.0, **q.survey}
        say(
            f"[simulate] {s['n_sites']} sites ({s['habitats']} habitats) x 2 recorders x {s['days']} days x "
            f"{len(s.get('hours', ()))} times of day, {s['duration_s']:g} s each, in {survey}/"
        )
        simulate_survey(survey, seed=q.seed, **s)
    analysis = Analysis(
        unit="site,recorder", window="1D", indices_seconds=QUICKSTART_INDICES_SECONDS, novelty_elbo=True
    )
    if q.from_scratch:
        training = Training(preset="tiny", max_steps=q.steps or QUICKSTART_SCRATCH_STEPS, seed=q.seed)
    else:
        training = Training(max_steps=q.steps or QUICKSTART_FINE_TUNE_STEPS, seed=q.seed, init=pretrained_dir())
    settings = Settings(
        target="site", recorder="recorder_model", analysis=analysis, training=training, progress=progress
    )
    path = run_pipeline(survey, out=Path(out), settings=settings)
    python = os.path.relpath(sys.executable)
    python = sys.executable if python.startswith("..") else python
    latents = Path(out) / LATENTS_FILE
    say(
        f"\ndone in {time.time() - t0:.0f} s. Open {path} in a browser; the latents (with this ecovae's Python):\n"
        f"  {python} -c \"import pandas as pd; print(pd.read_parquet('{latents}'))\""
    )
    return path
