"""The ``ecovae`` command line. Heavy libraries are imported inside commands, so --help is instant."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Learned soundscape representations with a convolutional VAE: simulate, train, encode, evaluate, interpret, report.",
)

Preset = Annotated[
    str | None,
    typer.Option(
        help="Model size: 'full' (MODEL.md's table, for a GPU), 'small' or 'tiny' (a CPU); default: the largest "
        "that fits the budget here, measured before training starts."
    ),
]
Budget = Annotated[
    float,
    typer.Option(help="Minutes of training to plan for: sets the preset and the steps unless they are given."),
]
Verbose = Annotated[bool, typer.Option("--verbose", help="Debug messages too.")]
MODEL_HELP = "Run folder made by 'ecovae train', or 'pretrained': the model that ships with ecovae."
ModelDir = Annotated[Path, typer.Option("--model", help=MODEL_HELP)]
Init = Annotated[
    str | None,
    typer.Option(
        "--init",
        help="Start from a model's weights instead of random ones (fine-tuning): 'pretrained' (the model that ships "
        "with ecovae) or a run folder. Its preset and recipe are kept; the steps fit the budget.",
    ),
]


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
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Learned soundscape representations with a convolutional VAE."""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Lightning's start-up chatter says nothing a user needs here.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


_DISK_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}


@contextmanager
def _user_errors() -> Iterator[None]:
    """What a user can act on becomes one line naming the file and what to do; no traceback."""
    try:
        yield
    except typer.Exit:  # a message already given (click's Exit is a RuntimeError)
        raise
    except OSError as e:
        if e.errno in _DISK_ERRORS:
            where = f" {e.filename}" if e.filename else ""
            _fail(
                f"cannot write{where}: {e.strerror or e}. The disk is full or read-only: "
                "free some space, or choose another --out"
            )
        _fail(str(e))
    except (ValueError, RuntimeError) as e:
        _fail(str(e))


@app.command()
def simulate(
    out: Annotated[Path, typer.Argument(help="Folder to write the survey into.")],
    sites: int = typer.Option(4, help="Sites along the degradation gradient."),
    recorders: int = typer.Option(2, help="Recorders per site (models alternate)."),
    days: int = typer.Option(1, help="Days recorded."),
    habitats: int = typer.Option(
        0,
        help="Habitat levels along the degradation gradient (0: one per site); sites of a habitat differ in their day.",
    ),
    hours: str = typer.Option("0,5.5,7,12,18,21.5", help="Recording start hours, comma-separated."),
    duration: float = typer.Option(60.0, help="Seconds per recording."),
    seed: int = typer.Option(0, help="Random seed: the survey depends on it alone."),
    rare_events: int = typer.Option(
        0, help="Recordings given a rare sound (a siren or a chainsaw), listed in events.csv; the rest unchanged."
    ),
    event_db: float = typer.Option(30.0, help="The rare sounds' level over the ambient where they are, dB."),
) -> None:
    """Write a synthetic survey (WAV files with AudioMoth-style names) and its labels.csv."""
    from ecovae.simulate import simulate_survey

    try:
        hour_list = tuple(float(h) for h in hours.split(",") if h.strip())
    except ValueError:
        _fail(f"--hours must be numbers separated by commas, not {hours!r}")
    with _user_errors():
        labels = simulate_survey(
            out,
            sites,
            recorders,
            hour_list,
            days,
            duration,
            seed,
            habitats=habitats or None,
            rare_events=rare_events,
            event_db=event_db,
        )
    n = sites * recorders * days * len(hour_list)
    typer.echo(f"wrote {n} recordings of {duration:g} s under {out}/ and their labels in {labels}")


@app.command()
def train(
    recordings: Annotated[Path, typer.Argument(help="Folder of recordings (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder to create (or resume).")],
    labels: Annotated[Path | None, typer.Option(help="CSV with a 'path' column and label columns.")] = None,
    preset: Preset = None,
    budget_minutes: Budget = 20.0,
    max_steps: Annotated[int | None, typer.Option(help="Optimisation steps in total.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training windows per step.")] = None,
    window_frames: Annotated[int | None, typer.Option(help="Frames (1.536 s each) per training window.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW, cosine decay).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the split, initialisation and sampling.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps between checkpoints.")] = None,
    checkpoint_minutes: Annotated[
        float | None, typer.Option(help="Minutes between checkpoints (as well), default 10.")
    ] = None,
    val_every: Annotated[int | None, typer.Option(help="Steps between validations.")] = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader worker processes.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="Lightning accelerator: auto, cpu, gpu, ...")] = None,
    devices: Annotated[str | None, typer.Option(help="Lightning devices: auto, 1, 2, ...")] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="Lightning precision: 32-true (default), bf16-mixed (faster on GPUs and bf16 CPUs; learns differently)."
        ),
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="Lightning strategy: auto, or ddp for several devices or nodes.")
    ] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes of a distributed run (SLURM, torchrun).")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    init: Init = None,
    cache: Annotated[
        Path | None,
        typer.Option(
            help="Log-mel cache folder, reused by later runs on the same recordings "
            "(default $ECOVAE_CACHE, else ~/.cache/ecovae)."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    verbose: Verbose = False,
) -> None:
    """Train a VAE on a folder of recordings; writes weights, config, metrics and a manifest to --out."""
    _setup_logging(verbose)
    from ecovae.train import train as run_training
    from ecovae.train import train_preset

    given = dict(
        max_steps=max_steps,
        batch_size=batch_size,
        window_frames=window_frames,
        learning_rate=learning_rate,
        seed=seed,
        checkpoint_every=checkpoint_every,
        checkpoint_minutes=checkpoint_minutes,
        val_every=val_every,
        num_workers=num_workers,
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        strategy=strategy,
        num_nodes=num_nodes,
    )
    from ecovae.train import TrainingStopped

    parent = _model(init) if init and not resume else None
    try:
        with _user_errors():
            if resume:
                preset = _resumed_preset(out, preset, given)
            elif parent is not None:
                preset, given = _plan_fine_tune(parent, preset, given, budget_minutes)
            else:
                preset, given["max_steps"] = _plan(preset, max_steps, budget_minutes, accelerator)
            tcfg = train_preset(preset, **given)
            manifest = run_training(
                recordings, out, tcfg, labels_csv=labels, resume=resume, progress=not quiet, cache=cache, init=parent
            )
    except TrainingStopped as e:
        # 128 + SIGTERM: a scheduler sees the job did not finish
        _fail(f"{e}. Continue with the same command and --resume", code=143)
    if manifest is not None:  # None: a later process of a distributed run; the first one reports
        _print_training(out, manifest)


def _plan(preset: str | None, max_steps: int | None, budget_minutes: float, accelerator: str | None) -> tuple:
    """(preset, steps) for a new run, said before it starts: what, how many steps and how long here."""
    from ecovae.train import plan_training

    plan = plan_training(budget_minutes, preset_name=preset, max_steps=max_steps, accelerator=accelerator or "auto")
    over = plan.minutes > budget_minutes * 1.1
    typer.echo(
        f"[plan] {plan.describe()}"
        + (f"; over the {budget_minutes:g}-minute budget" if over else f"; budget {budget_minutes:g} min")
        + ("" if preset else " (the preset that fits it here; --preset and --max-steps choose)")
    )
    return plan.preset, plan.max_steps


def _plan_fine_tune(parent: Path, preset: str | None, given: dict, budget_minutes: float) -> tuple[str, dict]:
    """(preset, settings) for a run from ``parent``'s weights: its preset and recipe, the steps that fit the budget
    (or --max-steps), said before it starts."""
    from ecovae.train import fine_tune_settings, plan_training

    settings = fine_tune_settings(parent)
    if preset is not None and preset != settings["preset"]:
        _fail(f"--init {parent} is a '{settings['preset']}' model; --preset {preset} cannot start from it")
    plan = plan_training(
        budget_minutes,
        preset_name=settings["preset"],
        max_steps=given.get("max_steps"),
        accelerator=given.get("accelerator") or "auto",
        fit_budget=True,
    )
    typer.echo(f"[plan] fine-tuning {parent}: {plan.describe()}; budget {budget_minutes:g} min")
    return plan.preset, {**settings, **{k: v for k, v in given.items() if v is not None}, "max_steps": plan.max_steps}


def _resumed_preset(out: Path, preset: str | None, given: dict) -> str:
    """A resumed run keeps its settings: an option given that would change one of them is refused, not ignored."""
    from ecovae.train import RESUMABLE

    config = out / "config.json"
    if not config.is_file():
        _fail(f"{out} holds no run to resume (no config.json); leave out --resume to start one")
    saved = json.loads(config.read_text())["train"]
    changed = [
        f"--{k.replace('_', '-')} {v} (the run has {saved.get(k)})"
        for k, v in {**given, "preset": preset}.items()
        if v is not None and k not in RESUMABLE and k in saved and saved[k] != v
    ]
    if changed:
        _fail(
            f"a resumed run keeps its settings, but {', '.join(changed)} was given; only "
            f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE if k != 'log_every')} may change. "
            "Start a new --out to change it"
        )
    if given.get("max_steps") is None:  # to the steps it was planned for, unless told otherwise
        given["max_steps"] = saved.get("max_steps")
    return saved.get("preset", "full")


def _print_training(out: Path, manifest: dict) -> None:
    data, held = manifest["data"], manifest["heldout"]
    typer.echo(
        f"trained {manifest['global_step']} steps in {manifest['wall_time_s']:.0f} s on "
        f"{data['recordings_used']} recordings ({data['hours']:.2f} h); skipped {len(data['skipped'])} files"
    )
    for rel, reason in data["skipped"].items():
        typer.echo(f"  skipped {rel}: {reason}")
    if held.get("initial") and held.get("final"):
        typer.echo(
            f"held-out negative ELBO per frame: {held['initial']['neg_elbo']:.1f} -> {held['final']['neg_elbo']:.1f}"
            f" (MSE {held['final']['mse']:.3f}, KL {held['final']['kl']:.1f})"
        )
    typer.echo(f"run folder: {out}/ (model.safetensors, config.json, metrics.csv, run.json)")


PrecisionOption = Annotated[
    str,
    typer.Option(
        help="The encoder's precision: auto (the fastest that passes its fidelity check here; an existing output's "
        "own), fp32, bf16 (CPUs with AVX512_BF16 or AMX; GPUs), int8 (CPU, pip install 'ecovae\\[fast]')."
    ),
]


@app.command()
def encode(
    recordings: Annotated[Path, typer.Argument(help="Folder of recordings (searched recursively).")],
    model: ModelDir,
    out: Annotated[
        Path, typer.Option("--out", help="A .parquet file, or a folder for a Parquet dataset (resumes if interrupted).")
    ],
    labels: Annotated[Path | None, typer.Option(help="CSV with a 'path' column and label columns.")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Clips per forward pass (default: 1 on CPU, 8 on GPU).")
    ] = None,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1, ...")] = "cpu",
    correct_hardware: Annotated[
        str | None, typer.Option(help="Label column of the recorder: remove each recorder's log-mel offset first.")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="local, or ray: a Ray cluster (pip install 'ecovae\\[distributed]').")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster address; 'auto': the one this node is in (default: a new local one)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Decoding processes beside the model (default: from the cores).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Torch threads for the model (default: torch's, the physical cores).")
    ] = None,
    precision: PrecisionOption = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    verbose: Verbose = False,
) -> None:
    """Per-frame posterior (mu, log var) of every recording, with labels and times, to Parquet."""
    _setup_logging(verbose)
    from ecovae.encode import encode as run_encoding

    model = _model(model)
    with _user_errors():
        offsets = None
        if correct_hardware:
            from ecovae.encode import recorded_correction

            column, offsets = recorded_correction(out)
            if column == correct_hardware and offsets:
                typer.echo(f"hardware correction by {correct_hardware}: the output's own offsets for {sorted(offsets)}")
            else:
                from ecovae.recorder_offsets import fit_survey_offsets
                from ecovae.run import load_model

                fitted = fit_survey_offsets(recordings, labels, correct_hardware, load_model(model)[1])
                offsets = fitted.offsets_
                typer.echo(f"hardware correction by {correct_hardware}: offsets for {sorted(offsets)}")
        summary = run_encoding(
            recordings,
            model,
            out,
            labels,
            batch_size,
            device,
            progress=not quiet,
            offsets=offsets,
            offset_column=correct_hardware,
            workers=workers,
            threads=threads,
            engine=engine,
            address=address,
            precision=precision,
        )
    typer.echo("\n".join(summary.lines()))
    if summary.frames_in_output == 0:
        _fail(f"no file could be encoded ({len(summary.skipped)} skipped, reasons above): the output holds no frames")


BASELINE_DEFAULT = "indices,logmel,birdnet"  # BirdNET only where its extra is installed
Latents = Annotated[Path, typer.Argument(help="Parquet file made by 'ecovae encode'.")]


def _recordings_root(run_dir: Path | None, given: Path | None) -> Path:
    """Where the audio is: --recordings, else the folder the run was trained on."""
    if given is not None:
        return given
    if run_dir is None:
        _fail("pass --recordings DIR")
    import json

    recordings = (
        json.loads((run_dir / "run.json").read_text()).get("recordings") if (run_dir / "run.json").is_file() else None
    )
    if not recordings or not Path(recordings).is_dir():
        _fail(f"cannot find the recordings of {run_dir}; pass --recordings")
    return Path(recordings)


Unit = Annotated[
    str | None,
    typer.Option(
        help="Unit of analysis: label columns whose values make one unit, e.g. 'site,recorder' (default: each recording)."
    ),
]
Window = Annotated[
    str | None, typer.Option(help="Also cut units by time: a pandas frequency, e.g. 1D (one unit per day), 6h.")
]


@app.command()
def describe(
    latents: Latents,
    out: Annotated[Path, typer.Option("--out", help="Parquet file of descriptors.")],
    kind: Annotated[
        str, typer.Option(help="mean (of mu), moments (mixture mean and variance) or mixture (samples).")
    ] = "moments",
    unit: Unit = None,
    window: Window = None,
    features: Annotated[
        str, typer.Option(help="vae (the posteriors) or logmel (the frames' mean log-mel per band).")
    ] = "vae",
    samples: Annotated[int, typer.Option(help="Samples per unit for --kind mixture.")] = 64,
    seed: int = 0,
) -> None:
    """Soundscape descriptors: one row per unit (a recording, or e.g. a site-day) or per mixture sample, with its labels."""
    _setup_logging(False)
    from ecovae.descriptors import describe as make_descriptors
    from ecovae.descriptors import group_units
    from ecovae.latents import read_latents

    with _user_errors():
        table = make_descriptors(group_units(read_latents(latents), unit, window, features), kind, samples, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False)
    typer.echo(f"wrote {len(table)} rows of {kind} descriptors to {out}")


@app.command()
def evaluate(
    latents: Latents,
    target: Annotated[str, typer.Option(help="Label column to classify (site, habitat, day_night, ...).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics, confusion matrices and predictions.")],
    unit: Unit = None,
    window: Window = None,
    group: Annotated[
        str | None,
        typer.Option(
            help="Label column whose values never straddle a split, e.g. site for new sites (default: the unit)."
        ),
    ] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds (fewer if a class has fewer groups).")] = 5,
    recorder: Annotated[
        str | None, typer.Option(help="Recorder label column: also run the hardware check (needs --model).")
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="Run folder, or 'pretrained' (for the hardware check).")
    ] = None,
    recordings: Annotated[Path | None, typer.Option(help="Audio folder (default: the run's).")] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels CSV of the recordings (for the hardware check).")] = None,
    baselines: Annotated[
        str,
        typer.Option(
            help="Baseline feature sets scored beside; indices and birdnet need the audio (--model or --recordings); '' for none."
        ),
    ] = BASELINE_DEFAULT,
    cache: Annotated[
        Path | None,
        typer.Option(help="Folder caching the baselines' windows (default: LATENTS.baselines/ beside the latents)."),
    ] = None,
    seed: int = 0,
) -> None:
    """Cross-validated classification of units from every feature set and descriptor, with metrics and confusion matrices."""
    _setup_logging(False)
    from ecovae.descriptors import group_units
    from ecovae.evaluate import evaluate_descriptors, write_evaluation
    from ecovae.latents import read_latents

    model = _model(model) if model is not None else None
    root = _recordings_root(model, recordings) if (model is not None or recordings is not None) else None
    with _user_errors():
        frames = read_latents(latents)
        units = group_units(frames, unit, window)
        features = _baselines(frames, baselines, root, cache or _cache_beside(latents), unit, window)
        ev = evaluate_descriptors(
            units, target, group, n_splits=folds, seed=seed, features=features, unit=_unit_name(unit, window)
        )
        write_evaluation(ev, out, latents)
    _print_evaluation(ev)
    if recorder:
        if model is None:
            _fail("the hardware check (--recorder) needs --model RUN/")
        _hardware(model, _recordings_root(model, recordings), labels, recorder, target, out, seed)
    typer.echo(f"evaluation in {out}/ (metrics.csv, per_fold.csv, per_class.csv, confusion_*.png, predictions.parquet)")


def _cache_beside(latents: Path) -> Path:
    return latents.with_name(latents.name.removesuffix(".parquet") + ".baselines")


def _unit_name(unit: str | None, window: str | None) -> str:
    from ecovae.descriptors import parse_unit

    name = ",".join(parse_unit(unit)) or "recording"
    return f"{name} per {window}" if window else name


def _baselines(
    frames,
    names: str,
    root: Path | None,
    cache: Path | None,
    unit: str | None,
    window: str | None,
    indices_seconds: float | None = None,
    progress: bool = True,
) -> dict:
    from ecovae.baselines import baseline_sets

    kinds = [k.strip() for k in names.split(",") if k.strip()]
    if not kinds:
        return {}
    limit = f" (indices on the first {indices_seconds:g} s of each recording)" if indices_seconds else ""
    typer.echo(f"baseline features: {', '.join(kinds)}{limit}; cached in {cache}/")
    return baseline_sets(frames, kinds, root, cache, unit, window, indices_seconds=indices_seconds, progress=progress)


def _print_evaluation(ev) -> None:
    from ecovae.evaluate import verdict

    typer.echo(
        f"{ev.target}: {ev.n_units} units ({ev.unit}), {ev.n_folds} folds grouped by {ev.group}; "
        f"chance balanced accuracy {ev.chance['balanced_accuracy']:.3f}"
    )
    for r in ev.summary.itertuples():
        typer.echo(
            f"  {r.features:>8} {r.descriptor:>8} {r.classifier:>6}: balanced accuracy {r.balanced_accuracy:.3f}"
            f" (fold sd {r.balanced_accuracy_fold_sd:.3f})  macro-F1 {r.macro_f1:.3f}  ROC-AUC {r.roc_auc:.3f}"
        )
    if ev.unlabelled:
        more = f", ... ({len(ev.unlabelled) - 5} more)" if len(ev.unlabelled) > 5 else ""
        typer.echo(
            f"  left out {len(ev.unlabelled)} units with no {ev.target!r} label: {', '.join(ev.unlabelled[:5])}{more}"
        )
    if ev.dropped:
        typer.echo(f"  left out classes with fewer than 2 {ev.group} groups: {', '.join(map(str, ev.dropped))}")
    v = verdict(ev.summary)
    b = v["best"]
    typer.echo(f"best: {b['features']} {b['descriptor']} / {b['classifier']} {b['balanced_accuracy']:.3f}")
    for k, a in v.get("against", {}).items():
        typer.echo(f"  VAE best vs {k} best: {a['difference']:+.3f}")


def _hardware(
    run_dir: Path,
    root: Path,
    labels: Path | None,
    recorder: str,
    target: str,
    out: Path,
    seed: int,
    quiet: bool = False,
) -> None:
    import json

    from ecovae.hardware import hardware_check
    from ecovae.run import load_model

    typer.echo(f"[hardware] can {recorder} be told from the latents, with and without its correction? (per recording)")
    model, spec = load_model(run_dir)
    try:
        result = hardware_check(model, spec, root, labels, recorder, target, seed=seed, progress=not quiet)
    except ValueError as e:
        _fail(str(e))
    (out / "hardware.json").write_text(json.dumps(result, indent=2) + "\n")
    r, t = result["recorder_balanced_accuracy"], result["target_balanced_accuracy"]
    typer.echo(
        f"hardware check: {recorder} predictable at {r['without']:.3f} -> {r['with']:.3f} with correction; "
        f"{target} {t['without']:.3f} -> {t['with']:.3f}"
    )


@app.command()
def interpret(
    latents: Latents,
    model: ModelDir,
    target: Annotated[str, typer.Option(help="Label column the classifier separates.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the figures and interpretation.json.")],
    recordings: Annotated[Path | None, typer.Option(help="Audio folder (default: the run's).")] = None,
    recording: Annotated[str | None, typer.Option(help="Recording (relative path) for the saliency map.")] = None,
    classes: Annotated[
        str | None, typer.Option(help="Two classes for the boundary walk, 'A,B' (default: the two commonest).")
    ] = None,
    unit: Unit = None,
    window: Window = None,
    novelty: Annotated[
        Path | None,
        typer.Option(help="Folder of 'ecovae novelty': its top frames are never offered as exemplars of a class."),
    ] = None,
    seed: int = 0,
) -> None:
    """Reconstructions, saliency maps, a walk across the decision boundary (to see and to hear), and latent projections."""
    _setup_logging(False)
    import json

    from ecovae.descriptors import group_units
    from ecovae.interpret import interpret as run_interpretation
    from ecovae.latents import read_latents
    from ecovae.novelty import unusual_frames
    from ecovae.run import load_model

    model = _model(model)
    pair = tuple(classes.split(",")) if classes else None
    if pair is not None and len(pair) != 2:
        _fail("--classes takes two classes, 'A,B'")
    with _user_errors():
        vae, spec = load_model(model)
        run_info = json.loads((model / "run.json").read_text()) if (model / "run.json").is_file() else {}
        frames = read_latents(latents)
        info = run_interpretation(
            group_units(frames, unit, window),
            vae,
            spec,
            _recordings_root(model, recordings),
            target,
            out,
            run_info,
            recording,
            pair,
            seed,
            frames,
            unusual_frames(novelty) if novelty else None,
        )
    walk = info["boundary_walk"]
    typer.echo(
        f"boundary walk {walk['from']} -> {walk['to']}: p = " + " ".join(f"{p:.2f}" for p in walk["probabilities"])
    )
    typer.echo(
        f"figures in {out}/ (saliency.jpg, boundary_walk.jpg, reconstruction_*.jpg, projection_*.png, exemplars/)"
    )


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder, or 'pretrained' (the model that ships with ecovae).")],
    eval_dir: Annotated[Path, typer.Argument(help="Evaluation folder (evaluate / interpret --out).")],
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("report.html"),
    audio_budget_mb: Annotated[
        float, typer.Option(help="Sound embedded in the report (MB); past it, links to the files beside it.")
    ] = 8.0,
) -> None:
    """One self-contained HTML report (and methods.json beside it)."""
    from ecovae.report import write_report

    with _user_errors():
        path = write_report(_model(run_dir), eval_dir, out, audio_budget_mb=audio_budget_mb)
    typer.echo(f"report: {path} (methods card also in {path.with_name('methods.json')})")


NOVELTY_FEATURES = ("logmel", "vae")  # the first ranks (ecovae.novelty: why log-mel, measured)
NOVELTY_TOP = 50
NOVELTY_LISTEN = 10  # moments of the top list (no two excerpts overlapping) to hear in the report


def _novelty(
    frames,
    recordings: Path,
    out: Path,
    features: tuple[str, ...],
    top: int,
    elbo,
    spec,
    seed: int,
) -> dict:
    """Score, write the scores and their summary, and excerpts of the most unusual frames to listen to."""
    from ecovae.interpret import write_excerpts
    from ecovae.novelty import (
        CLIP_SD,
        ELBO_CACHE_FILE,
        EVENTS_FILE,
        NEIGHBOURS,
        distinct_moments,
        neg_elbo_per_frame,
        novelty_scores,
        read_events,
        score_columns,
        write_novelty,
    )

    cache = out / ELBO_CACHE_FILE  # the decoder pass is as long as encoding: a resumed run must not redo it
    neg_elbo = neg_elbo_per_frame(elbo[0], elbo[1], recordings, frames, cache) if elbo else None
    scores = novelty_scores(frames, features, seed=seed, neg_elbo=neg_elbo)
    settings = {
        "features": list(features),
        "neighbours": NEIGHBOURS,
        "clip_sd": CLIP_SD,
        "neg_elbo": neg_elbo is not None,
        "recordings": str(recordings),
    }
    columns = score_columns(scores)
    wanted = [
        (
            f"excerpts/top_{int(r['rank']):03d}",
            r["path"],
            r["frame_offset_s"],
            {"rank": int(r["rank"])} | {c: float(r[c]) for c in columns},
        )
        for _, r in distinct_moments(scores, min(top, NOVELTY_LISTEN)).iterrows()
    ]
    listen = write_excerpts(recordings, spec.frame_seconds, out, wanted)
    events = read_events(recordings / EVENTS_FILE)
    return write_novelty(scores, out, top, events, spec.frame_seconds, settings, listen)


@app.command()
def novelty(
    latents: Annotated[Path, typer.Argument(help="Latents from 'ecovae encode'.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for novelty.parquet, the top list and excerpts.")],
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Run folder, or 'pretrained' (for --elbo and the spectrogram settings)."),
    ] = None,
    recordings: Annotated[Path | None, typer.Option(help="Recordings folder (default: the run's).")] = None,
    top: Annotated[int, typer.Option(help="Frames in the top list.")] = NOVELTY_TOP,
    features: Annotated[
        str, typer.Option(help="Feature sets to score, comma-separated; the first ranks (logmel, vae).")
    ] = ",".join(NOVELTY_FEATURES),
    elbo: Annotated[
        bool, typer.Option("--elbo", help="Also each frame's negative ELBO (a decoder pass; needs --model).")
    ] = False,
    seed: int = 0,
) -> None:
    """Unusual sounds ranked: each frame's k-nearest-neighbour density among the survey's frames (rarest first)."""
    _setup_logging(False)
    from ecovae.latents import read_latents
    from ecovae.run import load_model
    from ecovae.spectrogram import SpectrogramConfig

    if elbo and model is None:
        _fail("--elbo needs --model RUN (the decoder)")
    model = _model(model) if model is not None else None
    with _user_errors():
        frames = read_latents(latents)
        if recordings is None and model is not None:
            recordings = Path(json.loads((model / "run.json").read_text()).get("recordings", ""))
        if recordings is None or not recordings.is_dir():
            _fail(f"the recordings folder {recordings} is not there: give --recordings (the excerpts need the audio)")
        net, spec = load_model(model) if model else (None, SpectrogramConfig())
        names = tuple(f.strip() for f in features.split(",") if f.strip())
        summary = _novelty(frames, recordings, out, names, top, (net, spec) if elbo else None, spec, seed)
    typer.echo(
        f"{summary['frames']} frames scored ({summary['silent_frames']} silent, unranked), ranked by "
        f"{summary['ranked_by']}; top {top} in {out / 'novelty_top.csv'}"
    )
    for e in summary.get("events") or []:
        typer.echo(
            f"  known event {e['kind']} in {e['path']} at {e['start_s']:.1f}-{e['end_s']:.1f} s: best rank {e['best_rank']}"
        )


plot_app = typer.Typer(no_args_is_help=True, help="Figures from the latents.")
app.add_typer(plot_app, name="plot")


@plot_app.command("diel")
def plot_diel(
    latents: Annotated[Path, typer.Argument(help="Latents from 'ecovae encode'.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for diel_<group>.png and diel.json.")],
    by: Annotated[
        str, typer.Option(help="Label column: one image per value (site, say); 'none' for one image.")
    ] = "site",
    bin_minutes: Annotated[int, typer.Option(help="Minutes per column of the image.")] = 30,
    seed: int = 0,
) -> None:
    """Days at a glance: three principal components of mu as red, green and blue, days x time of day, per group."""
    from ecovae.diel import diel_views, write_diel
    from ecovae.latents import read_latents

    with _user_errors():
        views, settings = diel_views(read_latents(latents), None if by == "none" else by, bin_minutes, seed)
        summary = write_diel(views, settings, out)
    for v in summary["views"]:
        typer.echo(f"{out / v['image']}: {len(v['days'])} days, {v['frames']} frames")


@app.command()
def run(
    recordings: Annotated[Path, typer.Argument(help="Folder of recordings.")],
    target: Annotated[str, typer.Option(help="Label column to classify.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for everything.")],
    labels: Annotated[Path | None, typer.Option(help="Labels CSV ('path' + label columns).")] = None,
    unit: Unit = None,
    window: Window = None,
    group: Annotated[str | None, typer.Option(help="Label column for grouped folds (default: the unit).")] = None,
    recorder: Annotated[str | None, typer.Option(help="Recorder label column for the hardware check.")] = None,
    preset: Preset = None,
    budget_minutes: Budget = 20.0,
    max_steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Use this model as it is, with no training: " + MODEL_HELP),
    ] = None,
    init: Init = None,
    seed: int = 0,
    precision: PrecisionOption = "auto",
    device: Annotated[
        str, typer.Option(help="Where to train and encode: auto (a GPU if there is one), cpu, cuda.")
    ] = "auto",
    baselines: Annotated[
        str, typer.Option(help="Baseline feature sets beside the VAE (indices, logmel, birdnet); '' for none.")
    ] = BASELINE_DEFAULT,
    elbo: Annotated[
        bool, typer.Option("--elbo", help="Also rank unusual frames by negative ELBO (a decoder pass over the survey).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    verbose: Verbose = False,
) -> None:
    """Train, encode, evaluate, interpret and report, in one go (run it again to resume where it stopped)."""
    _setup_logging(verbose)
    analysis = Analysis(unit, window, group, precision=precision, novelty_elbo=elbo, baselines=baselines)
    if model is not None and init is not None:
        _fail("--model uses a model as it is; --init trains from one: give one of them")
    training = Training(
        preset,
        max_steps,
        budget_minutes,
        seed,
        device,
        model=_model(model) if model is not None else None,
        init=_model(init) if init is not None else None,
    )
    _pipeline(recordings, out, labels, target, analysis, recorder, training, quiet)


@dataclass
class Analysis:
    """How the pipeline's evaluation is cut: units, time windows, fold groups; what it skips for speed."""

    unit: str | None = None
    window: str | None = None
    group: str | None = None
    indices_seconds: float | None = None
    precision: str = "auto"  # the encoder's (ecovae.precision)
    novelty_elbo: bool = False  # also rank frames by negative ELBO (a decoder pass over the survey)
    baselines: str = "indices,logmel,birdnet"


@dataclass
class Training:
    """What the pipeline trains: a preset and steps, or None for what fits ``budget_minutes`` here."""

    preset: str | None = None
    max_steps: int | None = None
    budget_minutes: float = 20.0
    seed: int = 0
    device: str = "auto"
    model: Path | None = None  # a model used as it is: nothing trained
    init: Path | None = None  # a model whose weights training starts from (fine-tuning)

    @property
    def accelerator(self) -> str:
        return {"auto": "auto", "cpu": "cpu"}.get(self.device, "gpu")

    @property
    def encode_device(self) -> str:
        import torch

        return ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device


def _train_stage(recordings: Path, run_dir: Path, labels: Path | None, training: Training, resume: bool, quiet: bool):
    from ecovae.train import train as run_training
    from ecovae.train import train_preset

    given = {"max_steps": training.max_steps, "seed": training.seed, "accelerator": training.accelerator}
    if resume:
        preset = _resumed_preset(run_dir, training.preset, given)
    elif training.init is not None:
        preset, given = _plan_fine_tune(training.init, training.preset, given, training.budget_minutes)
    else:
        preset, given["max_steps"] = _plan(
            training.preset, training.max_steps, training.budget_minutes, training.accelerator
        )
    tcfg = train_preset(preset, **given)
    init = training.init if not resume else None
    manifest = run_training(recordings, run_dir, tcfg, labels_csv=labels, resume=resume, progress=not quiet, init=init)
    _print_training(run_dir, manifest)


def _pipeline(
    recordings: Path,
    out: Path,
    labels: Path | None,
    target: str,
    analysis: Analysis,
    recorder: str | None,
    training: Training,
    quiet: bool,
) -> Path:
    import json

    from ecovae.descriptors import group_units
    from ecovae.encode import encode as run_encoding
    from ecovae.evaluate import evaluate_descriptors, write_evaluation
    from ecovae.interpret import interpret as run_interpretation
    from ecovae.latents import read_latents
    from ecovae.novelty import unusual_frames
    from ecovae.report import write_report
    from ecovae.run import load_model
    from ecovae.train import TrainingStopped

    run_dir, latents, eval_dir = training.model or out / "run", out / "latents.parquet", out / "eval"
    resume = any((run_dir / "checkpoints").glob("*.ckpt"))
    a, seed = analysis, training.seed
    try:
        with _user_errors():
            if training.model is not None:
                typer.echo(f"[model] {run_dir}/ as it is (nothing trained)")
            else:
                typer.echo(f"[train] {run_dir}/" + (" (resuming)" if resume else ""))
                _train_stage(recordings, run_dir, labels, training, resume, quiet)
            typer.echo(f"[encode] {latents}")
            summary = run_encoding(
                recordings,
                run_dir,
                latents,
                labels,
                device=training.encode_device,
                progress=not quiet,
                precision=a.precision,
            )
            typer.echo("\n".join(summary.lines()))
            frames = read_latents(latents)
            typer.echo(f"[evaluate] {eval_dir}/")
            features = _baselines(
                frames, a.baselines, recordings, out / "baselines", a.unit, a.window, a.indices_seconds, not quiet
            )
            units = group_units(frames, a.unit, a.window)
            ev = evaluate_descriptors(
                units, target, a.group, seed=seed, features=features, unit=_unit_name(a.unit, a.window)
            )
            notes = {"indices": f" (first {a.indices_seconds:g} s of each recording)"} if a.indices_seconds else None
            write_evaluation(ev, eval_dir, latents, notes)
            _print_evaluation(ev)
            if recorder:
                _hardware(run_dir, recordings, labels, recorder, target, eval_dir, seed, quiet)
            model, spec = load_model(run_dir)
            typer.echo(f"[novelty] {eval_dir / 'novelty'}/")  # first: exemplars are never the survey's oddities
            elbo = (model, spec) if a.novelty_elbo else None
            _novelty(frames, recordings, eval_dir / "novelty", NOVELTY_FEATURES, NOVELTY_TOP, elbo, spec, seed)
            typer.echo(f"[interpret] {eval_dir}/")
            run_interpretation(
                units,
                model,
                spec,
                recordings,
                target,
                eval_dir,
                json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {},
                seed=seed,
                frames=frames,
                unusual=unusual_frames(eval_dir / "novelty"),
            )
            if frames["frame_time"].notna().any():
                from ecovae.diel import diel_views, write_diel

                typer.echo(f"[diel] {eval_dir / 'diel'}/")
                by = "site" if "site" in frames.columns else None  # when, where: never split by what is predicted
                write_diel(*diel_views(frames, by=by, seed=seed), eval_dir / "diel")
    except TrainingStopped as e:
        _fail(f"{e}. Run the same command again to continue (ecovae run resumes by itself)", code=143)
    path = write_report(run_dir, eval_dir, out / "report.html")
    typer.echo(f"[report] {path}")
    return path


@app.command("model-summary")
def model_summary(
    preset: Preset = "full",
    frames: Annotated[int, typer.Option(help="Frames in the input (39 = one clip).")] = 1,
) -> None:
    """The layer table with output shapes, parameters and FLOPs."""
    from ecovae.model import SoundscapeVAE
    from ecovae.model import preset as model_preset
    from ecovae.summary import format_summary

    try:
        cfg = model_preset(preset)
    except ValueError as e:
        _fail(str(e))
    typer.echo(f"preset {preset}, input {frames} frame(s) of 192 hops x {cfg.n_mels} mels")
    typer.echo(format_summary(SoundscapeVAE(cfg), frames))


QUICKSTART_FINE_TUNE_STEPS = 300  # of the shipped model on the survey: a minute or two on 2 cores
QUICKSTART_SCRATCH_STEPS = 1000  # of a tiny model from random weights (--from-scratch)
QUICKSTART_INDICES_SECONDS = 3.0  # the indices (slow) on each recording's first seconds only: a demo of minutes


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option("--out", help="Folder for the survey, the run and the latents.")] = Path(
        "ecovae-quickstart"
    ),
    steps: Annotated[
        int | None,
        typer.Option(
            help=f"Training steps: of the fine-tune (default {QUICKSTART_FINE_TUNE_STEPS}), or with --from-scratch "
            f"of the tiny model (default {QUICKSTART_SCRATCH_STEPS})."
        ),
    ] = None,
    from_scratch: Annotated[
        bool,
        typer.Option(
            "--from-scratch", help="Train a tiny model from random weights instead of fine-tuning the shipped one."
        ),
    ] = False,
    duration: Annotated[float, typer.Option(help="Seconds per simulated recording.")] = 12.0,
    sites: Annotated[int, typer.Option(help="Simulated sites.")] = 4,
    habitats: Annotated[
        int, typer.Option(help="Habitats the sites share (sites of one habitat differ in their day).")
    ] = 2,
    days: Annotated[int, typer.Option(help="Days recorded: one unit of analysis per site, recorder and day.")] = 3,
    hours: Annotated[str, typer.Option(help="Recording start hours, comma-separated.")] = "0,3,6,9,12,15,18,21",
    seed: Annotated[int, typer.Option(help="Seed for the survey and the training.")] = 0,
    rare_events: Annotated[
        int, typer.Option(help="Recordings given a rare sound (siren, chainsaw) for the novelty ranking to find.")
    ] = 4,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Simulate a survey of several days and run the whole pipeline on it: a report in minutes.

    The model is the one that ships with ecovae (pretrained on openly licensed field recordings and simulated
    worlds without this survey's species), fine-tuned briefly on the survey; --from-scratch trains a tiny one.

    Sites are compared over days, as ecologists compare them: one unit per site, recorder and day.
    """
    _setup_logging(False)
    from ecovae.simulate import simulate_survey

    t0 = time.time()
    survey = out / "survey"
    hour_list = tuple(float(h) for h in hours.split(",") if h.strip())
    if (survey / "labels.csv").is_file():
        typer.echo(f"[simulate] survey already in {survey}/")
    else:
        typer.echo(
            f"[simulate] {sites} sites ({habitats} habitats) x 2 recorders x {days} days x {len(hour_list)} "
            f"times of day, {duration:g} s each, in {survey}/"
        )
        simulate_survey(
            survey,
            n_sites=sites,
            hours=hour_list,
            days=days,
            seed=seed,
            duration_s=duration,
            habitats=habitats,
            rare_events=rare_events,
        )
    # What a demo of minutes spends its time on (bench/representation.py measured the choices):
    # training steps buy representation quality; the acoustic indices (slow) see 3 s of each recording.
    analysis = Analysis(
        unit="site,recorder", window="1D", indices_seconds=QUICKSTART_INDICES_SECONDS, novelty_elbo=True
    )
    if from_scratch:
        training = Training(preset="tiny", max_steps=steps or QUICKSTART_SCRATCH_STEPS, seed=seed)
    else:
        training = Training(max_steps=steps or QUICKSTART_FINE_TUNE_STEPS, seed=seed, init=_model("pretrained"))
    report_path = _pipeline(survey, out, None, "site", analysis, "recorder_model", training, quiet)
    python = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("..") else sys.executable
    typer.echo(
        f"\ndone in {time.time() - t0:.0f} s. Open {report_path} in a browser; the latents (with this ecovae's Python):\n"
        f"  {python} -c \"import pandas as pd; print(pd.read_parquet('{out / 'latents.parquet'}'))\""
    )


def main() -> None:  # python -m ecovae
    app()
