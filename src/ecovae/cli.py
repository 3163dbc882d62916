"""The ``ecovae`` command line: options parsed, then the library called (the pipeline is :mod:`ecovae.pipeline`).
Heavy libraries are imported inside commands, so --help is instant."""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import typer

from ecovae import options
from ecovae.progress import setup_logging

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Learned soundscape representations with a convolutional VAE: simulate, train, encode, evaluate, interpret, report.",
)


def _model(model: Path | str) -> Path:
    """A --model value as a folder: 'pretrained' is the shipped model's."""
    from ecovae.pretrained import resolve_model

    with _user_errors():
        return resolve_model(model)


def _version(value: bool) -> None:
    if value:
        from ecovae import __version__

        typer.echo(f"ecovae {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Learned soundscape representations with a convolutional VAE."""


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


_DISK_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}


@contextmanager
def _user_errors() -> Iterator[None]:
    """What a user can act on (a file, the disk, a setting) becomes one line naming it; no traceback."""
    try:
        yield
    except typer.Exit:  # a message already given (click's Exit is a RuntimeError)
        raise
    except Exception as e:
        training = sys.modules.get("ecovae.train")  # never imported: no training to have stopped
        if training is not None and isinstance(e, training.TrainingStopped):  # 128 + SIGTERM: the job did not finish
            _fail(f"{e}. Run the same command again to continue (with --resume for 'ecovae train')", code=143)
        if isinstance(e, OSError) and e.errno in _DISK_ERRORS:
            where = f" {e.filename}" if e.filename else ""
            _fail(
                f"cannot write{where}: {e.strerror or e}. The disk is full or read-only: free some space, or choose another --out"
            )
        if isinstance(e, (OSError, ValueError, RuntimeError)):
            _fail(str(e))
        raise  # a bug, not the user's: its traceback


def _frames(latents: Path, labels: Path | None):
    """The latents, with a labels CSV joined on (by recording or by frame) if one is given."""
    from ecovae.latents import add_labels, read_latents

    frames = read_latents(latents)
    return add_labels(frames, labels) if labels is not None else frames


def _hours(hours: str) -> tuple[float, ...]:
    try:
        return tuple(float(h) for h in hours.split(",") if h.strip())
    except ValueError:
        _fail(f"--hours must be numbers separated by commas, not {hours!r}")


@app.command()
def simulate(
    out: options.SimulateOut,
    sites: options.Sites = 4,
    recorders: options.RecordersPerSite = 2,
    days: options.Days = 1,
    habitats: options.Habitats = 0,
    hours: options.Hours = "0,5.5,7,12,18,21.5",
    duration: options.Duration = 60.0,
    seed: options.SurveySeed = 0,
    rare_events: options.RareEvents = 0,
    event_db: options.EventDb = 30.0,
) -> None:
    """Write a synthetic survey (WAV files with AudioMoth-style names) and its labels.csv."""
    from ecovae.simulate import simulate_survey

    hour_list = _hours(hours)
    with _user_errors():
        labels = simulate_survey(
            out,
            n_sites=sites,
            recorders_per_site=recorders,
            hours=hour_list,
            days=days,
            duration_s=duration,
            seed=seed,
            habitats=habitats or None,
            rare_events=rare_events,
            event_db=event_db,
        )
    n = sites * recorders * days * len(hour_list)
    typer.echo(f"wrote {n} recordings of {duration:g} s under {out}/ and their labels in {labels}")


@app.command()
def train(
    recordings: options.Recordings,
    out: options.RunOut,
    labels: options.Labels = None,
    preset: options.Preset = None,
    budget_minutes: options.Budget = 20.0,
    max_steps: options.MaxSteps = None,
    batch_size: options.BatchSize = None,
    window_frames: options.WindowFrames = None,
    learning_rate: options.LearningRate = None,
    seed: options.TrainSeed = None,
    checkpoint_every: options.CheckpointEvery = None,
    checkpoint_minutes: options.CheckpointMinutes = None,
    val_every: options.ValEvery = None,
    num_workers: options.NumWorkers = None,
    accelerator: options.Accelerator = None,
    devices: options.Devices = None,
    precision: options.TrainPrecision = None,
    strategy: options.Strategy = None,
    num_nodes: options.NumNodes = None,
    resume: options.Resume = False,
    init: options.Init = None,
    cache: options.Cache = None,
    quiet: options.Quiet = False,
    verbose: options.Verbose = False,
) -> None:
    """Train a VAE on a folder of recordings; writes weights, config, metrics and a manifest to --out."""
    setup_logging(verbose)
    from ecovae import pipeline
    from ecovae.train import train

    given = {k: v for k, v in locals().items() if k in TRAIN_OPTIONS}  # the training settings given, by name
    parent = _model(init) if init and not resume else None
    with _user_errors():
        tcfg = pipeline.training_config(
            run_dir=out, preset=preset, given=given, budget_minutes=budget_minutes, init=parent, resume=resume
        )
        manifest = train(
            recordings, out, tcfg, labels_csv=labels, resume=resume, progress=not quiet, cache=cache, init=parent
        )
    if manifest is not None:  # None: a later process of a distributed run; the first one reports
        typer.echo("\n".join(pipeline.training_lines(out, manifest)))


TRAIN_OPTIONS = (
    "max_steps batch_size window_frames learning_rate seed checkpoint_every checkpoint_minutes val_every num_workers "
    "accelerator devices precision strategy num_nodes"
).split()


@app.command()
def encode(
    recordings: options.Recordings,
    model: options.ModelDir,
    out: options.EncodeOut,
    labels: options.Labels = None,
    batch_size: options.ClipBatch = None,
    device: options.Device = "cpu",
    correct_hardware: options.CorrectHardware = None,
    engine: options.Engine = "local",
    address: options.Address = None,
    workers: options.Workers = None,
    threads: options.Threads = None,
    precision: options.Precision = "auto",
    quiet: options.QuietBar = False,
    verbose: options.Verbose = False,
) -> None:
    """Per-frame posterior (mu, log var) of every recording, with labels and times, to Parquet."""
    setup_logging(verbose)
    from ecovae.pipeline import Encoding, Settings, encode_stage, survey_of

    model = _model(model)
    names = "precision device batch_size workers threads engine address correct_hardware".split()
    encoding = Encoding(**{k: v for k, v in locals().items() if k in names})  # the encoding settings, by name
    with _user_errors():
        survey = survey_of(model=model, recordings=recordings, labels=labels)
        summary = encode_stage(survey, Settings(encoding=encoding, progress=not quiet), out, run_dir=model)
    if summary.frames_in_output == 0:
        _fail(f"no file could be encoded ({len(summary.skipped)} skipped, reasons above): the output holds no frames")


@app.command()
def describe(
    latents: options.Latents,
    out: options.DescribeOut,
    kind: options.Kind = "moments",
    unit: options.Unit = None,
    window: options.Window = None,
    features: options.FeatureSet = "vae",
    samples: options.Samples = 64,
    labels: options.FrameLabels = None,
    seed: options.Seed = 0,
) -> None:
    """Soundscape descriptors: one row per unit (a recording, or e.g. a site-day) or per mixture sample, with its labels."""
    setup_logging(False)
    from ecovae.descriptors import describe, group_units

    with _user_errors():
        frames = _frames(latents, labels)
        table = describe(group_units(frames, unit, window, features=features), kind, samples, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False)
    typer.echo(f"wrote {len(table)} rows of {kind} descriptors to {out}")


@app.command()
def evaluate(
    latents: options.Latents,
    target: options.Target,
    out: options.EvalOut,
    unit: options.Unit = None,
    window: options.Window = None,
    group: options.Group = None,
    folds: options.Folds = 5,
    recorder: options.Recorder = None,
    model: options.CheckModel = None,
    recordings: options.AudioFolder = None,
    labels: options.CheckLabels = None,
    baselines: options.Baselines = options.BASELINE_DEFAULT,
    cache: options.BaselineCache = None,
    seed: options.Seed = 0,
) -> None:
    """Cross-validated classification of units from every feature set and descriptor, with metrics and confusion matrices."""
    setup_logging(False)
    from ecovae import pipeline
    from ecovae.latents import is_frame_labels

    model = _model(model) if model is not None else None
    if recorder and model is None:
        _fail("the hardware check (--recorder) needs --model RUN/")
    analysis = pipeline.Analysis(unit=unit, window=window, group=group, folds=folds, baselines=baselines)
    settings = pipeline.Settings(
        target=target, recorder=recorder, analysis=analysis, training=pipeline.Training(seed=seed)
    )
    cache = cache or latents.with_name(latents.name.removesuffix(".parquet") + ".baselines")
    with _user_errors():
        given = model is not None or recordings is not None  # the indices and BirdNET need the audio
        of_recordings = labels if labels is not None and not is_frame_labels(labels) else None
        survey = pipeline.survey_of(model=model, recordings=recordings, labels=of_recordings) if given else None
        frames = _frames(latents, labels)
        pipeline.evaluate_stage(survey, settings, out, frames=frames, latents=latents, cache=cache)
        if recorder:
            pipeline.hardware_stage(survey, settings, out, run_dir=model)


@app.command()
def interpret(
    latents: options.Latents,
    model: options.ModelDir,
    target: options.InterpretTarget,
    out: options.InterpretOut,
    recordings: options.AudioFolder = None,
    recording: options.SaliencyRecording = None,
    classes: options.Classes = None,
    unit: options.Unit = None,
    window: options.Window = None,
    novelty: options.NoveltyFolder = None,
    seed: options.Seed = 0,
) -> None:
    """Reconstructions, saliency maps, a walk across the decision boundary (to see and to hear), and latent projections."""
    setup_logging(False)
    from ecovae.latents import read_latents
    from ecovae.pipeline import Analysis, Settings, Training, interpret_stage, survey_of

    model = _model(model)
    pair = tuple(classes.split(",")) if classes else None
    if pair is not None and len(pair) != 2:
        _fail("--classes takes two classes, 'A,B'")
    settings = Settings(target=target, analysis=Analysis(unit=unit, window=window), training=Training(seed=seed))
    with _user_errors():
        survey = survey_of(model=model, recordings=recordings)
        frames = read_latents(latents)
        interpret_stage(
            survey, settings, out, frames=frames, run_dir=model, novelty=novelty, recording=recording, classes=pair
        )


@app.command()
def report(
    run_dir: options.ReportRun,
    eval_dir: options.ReportEval,
    out: options.ReportOut = Path("report.html"),
    audio_budget_mb: options.AudioBudget = 8.0,
) -> None:
    """One self-contained HTML report (and methods.json beside it)."""
    from ecovae.report import write_report

    with _user_errors():
        path = write_report(_model(run_dir), eval_dir, out, audio_budget_mb=audio_budget_mb)
    typer.echo(f"report: {path} (methods card also in {path.with_name('methods.json')})")


@app.command()
def novelty(
    latents: options.Latents,
    out: options.NoveltyOut,
    model: options.NoveltyModel = None,
    recordings: options.AudioFolder = None,
    top: options.Top = 50,
    features: options.NoveltyFeatures = "logmel,vae",
    elbo: options.Elbo = False,
    labels: options.FrameLabels = None,
    seed: options.Seed = 0,
) -> None:
    """Unusual sounds ranked: each frame's k-nearest-neighbour density among the survey's frames (rarest first)."""
    setup_logging(False)
    from ecovae.pipeline import Analysis, Settings, Training, novelty_stage, survey_of

    if elbo and model is None:
        _fail("--elbo needs --model RUN (the decoder)")
    model = _model(model) if model is not None else None
    names = tuple(f.strip() for f in features.split(",") if f.strip())
    analysis = Analysis(novelty_features=names, novelty_top=top, novelty_elbo=elbo)
    if model is None and recordings is None:
        _fail("give --recordings (the excerpts need the audio) or --model RUN (the folder it was trained on)")
    with _user_errors():
        settings = Settings(analysis=analysis, training=Training(seed=seed))
        frames = _frames(latents, labels)
        novelty_stage(survey_of(model=model, recordings=recordings), settings, out, frames=frames, run_dir=model)


@app.command()
def explore(
    latents: options.Latents,
    model: options.ExploreModel = None,
    recordings: options.AudioFolder = None,
    novelty: options.ExploreNovelty = None,
    unit: options.Unit = None,
    window: options.Window = None,
    labels: options.ExploreLabels = None,
    column: options.Column = None,
    method: options.MapMethod = "umap",
    port: options.Port = 8765,
    no_open: options.NoOpen = False,
    host: options.Host = None,
    seed: options.Seed = 0,
) -> None:
    """A map of every frame to listen to, select, decode and name (a local web page; names become a labels CSV)."""
    setup_logging(False)
    from ecovae.explore import open_explorer
    from ecovae.explore_page import serve

    model = _model(model) if model is not None else None
    with _user_errors():
        explorer = open_explorer(
            latents,
            model=model,
            recordings=recordings,
            novelty=novelty,
            unit=unit,
            window=window,
            labels=labels,
            column=column,
            method=method,
            seed=seed,
        )
        serve(explorer, port=port, host=host, open_browser=not no_open)


plot_app = typer.Typer(no_args_is_help=True, help="Figures from the latents.")
app.add_typer(plot_app, name="plot")


@plot_app.command("diel")
def plot_diel(
    latents: options.Latents,
    out: options.DielOut,
    by: options.By = "site",
    bin_minutes: options.BinMinutes = 30,
    seed: options.Seed = 0,
) -> None:
    """Days at a glance: three principal components of mu as red, green and blue, days x time of day, per group."""
    from ecovae.diel import diel_views, write_diel
    from ecovae.latents import read_latents

    with _user_errors():
        views, settings = diel_views(read_latents(latents), None if by == "none" else by, bin_minutes, seed=seed)
        summary = write_diel(views, settings, out)
    for v in summary["views"]:
        typer.echo(f"{out / v['image']}: {len(v['days'])} days, {v['frames']} frames")


@app.command()
def run(
    recordings: options.RunRecordings,
    target: options.RunTarget,
    out: options.RunOutFolder,
    labels: options.RunLabels = None,
    unit: options.Unit = None,
    window: options.Window = None,
    group: options.RunGroup = None,
    recorder: options.RunRecorder = None,
    preset: options.Preset = None,
    budget_minutes: options.Budget = 20.0,
    max_steps: options.RunSteps = None,
    model: options.AsIsModel = None,
    init: options.Init = None,
    seed: options.Seed = 0,
    precision: options.Precision = "auto",
    device: options.RunDevice = "auto",
    baselines: options.RunBaselines = options.BASELINE_DEFAULT,
    elbo: options.RunElbo = False,
    quiet: options.Quiet = False,
    verbose: options.Verbose = False,
) -> None:
    """Train, encode, evaluate, interpret and report, in one go (run it again to resume where it stopped)."""
    setup_logging(verbose)
    from ecovae.pipeline import Analysis, Encoding, Settings, Training, run_pipeline

    if model is not None and init is not None:
        _fail("--model uses a model as it is; --init trains from one: give one of them")
    analysis = Analysis(unit=unit, window=window, group=group, novelty_elbo=elbo, baselines=baselines)
    model, init = (_model(m) if m is not None else None for m in (model, init))
    training = Training(preset=preset, max_steps=max_steps, budget_minutes=budget_minutes, seed=seed, device=device)
    settings = Settings(
        target=target,
        recorder=recorder,
        analysis=analysis,
        training=replace(training, model=model, init=init),
        encoding=Encoding(precision=precision),
        progress=not quiet,
    )
    with _user_errors():
        run_pipeline(recordings, out=out, settings=settings, labels_csv=labels)


@app.command("model-summary")
def model_summary(preset: options.Preset = "full", frames: options.Frames = 1) -> None:
    """The layer table with output shapes, parameters and FLOPs."""
    from ecovae import model
    from ecovae.summary import format_summary

    with _user_errors():
        cfg = model.preset(preset)
    typer.echo(f"preset {preset}, input {frames} frame(s) of 192 hops x {cfg.n_mels} mels")
    typer.echo(format_summary(model.SoundscapeVAE(cfg), frames))


@app.command()
def quickstart(
    out: options.QuickOut = Path("ecovae-quickstart"),
    steps: options.QuickSteps = None,
    from_scratch: options.FromScratch = False,
    duration: options.QuickDuration = 12.0,
    sites: options.QuickSites = 4,
    habitats: options.QuickHabitats = 2,
    days: options.QuickDays = 3,
    hours: options.Hours = "0,3,6,9,12,15,18,21",
    seed: options.QuickSeed = 0,
    rare_events: options.QuickEvents = 4,
    quiet: options.Quiet = False,
) -> None:
    """Simulate a survey of several days and run the whole pipeline on it: a report in minutes.

    The model is the one that ships with ecovae (pretrained on openly licensed field recordings and simulated
    worlds without this survey's species), fine-tuned briefly on the survey; --from-scratch trains a tiny one.

    Sites are compared over days, as ecologists compare them: one unit per site, recorder and day.
    """
    setup_logging(False)
    from ecovae.pipeline import Quickstart, run_quickstart

    survey = dict(duration_s=duration, n_sites=sites, habitats=habitats, days=days, hours=_hours(hours))
    quick = Quickstart(steps=steps, from_scratch=from_scratch, seed=seed, survey=survey | {"rare_events": rare_events})
    with _user_errors():
        run_quickstart(out, quickstart=quick, progress=not quiet)


def main() -> None:  # python -m ecovae
    app()
