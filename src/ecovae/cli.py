"""The ``ecovae`` command line. Heavy libraries are imported inside commands, so --help is instant."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Learned soundscape representations with a convolutional VAE: simulate, train, encode.",
)

Preset = Annotated[str, typer.Option(help="Model size: 'full' (MODEL.md's default) or 'tiny' (tests, CPU demos).")]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Lightning's start-up chatter says nothing a user needs here.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


@app.command()
def simulate(
    out: Annotated[Path, typer.Argument(help="Folder to write the survey into.")],
    sites: int = typer.Option(4, help="Sites along the degradation gradient."),
    recorders: int = typer.Option(2, help="Recorders per site (models alternate)."),
    days: int = typer.Option(1, help="Days recorded."),
    hours: str = typer.Option("0,5.5,7,12,18,21.5", help="Recording start hours, comma-separated."),
    duration: float = typer.Option(60.0, help="Seconds per recording."),
    seed: int = typer.Option(0, help="Random seed: the survey depends on it alone."),
) -> None:
    """Write a synthetic survey (WAV files with AudioMoth-style names) and its labels.csv."""
    from ecovae.simulate import simulate_survey

    try:
        hour_list = tuple(float(h) for h in hours.split(",") if h.strip())
    except ValueError:
        _fail(f"--hours must be numbers separated by commas, not {hours!r}")
    labels = simulate_survey(out, sites, recorders, hour_list, days, duration, seed)
    n = sites * recorders * days * len(hour_list)
    typer.echo(f"wrote {n} recordings of {duration:g} s under {out}/ and their labels in {labels}")


@app.command()
def train(
    recordings: Annotated[Path, typer.Argument(help="Folder of recordings (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder to create (or resume).")],
    labels: Annotated[Path | None, typer.Option(help="CSV with a 'path' column and label columns.")] = None,
    preset: Preset = "full",
    max_steps: Annotated[int | None, typer.Option(help="Optimisation steps in total.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training windows per step.")] = None,
    window_frames: Annotated[int | None, typer.Option(help="Frames (1.536 s each) per training window.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW, cosine decay).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the split, initialisation and sampling.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps between checkpoints.")] = None,
    val_every: Annotated[int | None, typer.Option(help="Steps between validations.")] = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader worker processes.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="Lightning accelerator: auto, cpu, gpu, ...")] = None,
    devices: Annotated[str | None, typer.Option(help="Lightning devices: auto, 1, 2, ...")] = None,
    precision: Annotated[str | None, typer.Option(help="Lightning precision: 32-true, bf16-mixed, 16-mixed.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose")] = False,
) -> None:
    """Train a VAE on a folder of recordings; writes weights, config, metrics and a manifest to --out."""
    _setup_logging(verbose)
    from ecovae.train import train as run_training
    from ecovae.train import train_preset

    given = dict(
        max_steps=max_steps, batch_size=batch_size, window_frames=window_frames, learning_rate=learning_rate,
        seed=seed, checkpoint_every=checkpoint_every, val_every=val_every, num_workers=num_workers,
        accelerator=accelerator, devices=devices, precision=precision,
    )  # fmt: skip
    try:
        tcfg = train_preset(preset, **given)
        manifest = run_training(recordings, out, tcfg, labels_csv=labels, resume=resume, progress=not quiet)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as e:
        _fail(str(e))
    _print_training(out, manifest)


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


@app.command()
def encode(
    recordings: Annotated[Path, typer.Argument(help="Folder of recordings (searched recursively).")],
    model: Annotated[Path, typer.Option("--model", help="Run folder made by 'ecovae train'.")],
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write (resumes if interrupted).")],
    labels: Annotated[Path | None, typer.Option(help="CSV with a 'path' column and label columns.")] = None,
    batch_size: Annotated[int, typer.Option(help="Clips per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1, ...")] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose")] = False,
) -> None:
    """Per-frame posterior (mu, log var) of every recording, with labels and times, to Parquet."""
    _setup_logging(verbose)
    from ecovae.encode import encode as run_encoding

    try:
        summary = run_encoding(recordings, model, out, labels, batch_size, device, progress=not quiet)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        _fail(str(e))
    typer.echo("\n".join(summary.lines()))


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


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option("--out", help="Folder for the survey, the run and the latents.")] = Path(
        "ecovae-quickstart"
    ),
    steps: Annotated[int, typer.Option(help="Training steps of the tiny model.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed for the survey and the training.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Simulate a small survey, train a tiny model on it, encode it: the whole pipeline in minutes."""
    _setup_logging(False)
    from ecovae.encode import encode as run_encoding
    from ecovae.simulate import simulate_survey
    from ecovae.train import train as run_training
    from ecovae.train import train_preset

    t0 = time.time()
    survey, run, latents = out / "survey", out / "run", out / "latents.parquet"
    if (survey / "labels.csv").is_file():
        typer.echo(f"[1/3] survey already in {survey}/")
    else:
        typer.echo(f"[1/3] simulating a survey in {survey}/ ...")
        simulate_survey(survey, seed=seed)
    resume = (run / "checkpoints" / "last.ckpt").is_file()
    typer.echo(f"[2/3] training a tiny model for {steps} steps in {run}/ {'(resuming)' if resume else ''}...")
    manifest = run_training(
        survey, run, train_preset("tiny", max_steps=steps, seed=seed), resume=resume, progress=not quiet
    )
    _print_training(run, manifest)
    typer.echo(f"[3/3] encoding the survey to {latents} ...")
    summary = run_encoding(survey, run, latents, progress=not quiet)
    typer.echo("\n".join(summary.lines()))
    typer.echo(f"\ndone in {time.time() - t0:.0f} s. Try:\n  python -c \"import pandas as pd; print(pd.read_parquet('{latents}'))\"")


def main() -> None:  # python -m ecovae
    app()
