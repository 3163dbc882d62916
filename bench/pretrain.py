"""Pretraining: the corpus, the recipes compared, and the learning curves that compare them.

    python bench/pretrain.py corpus                                # ../shared/data (less GPL) + ../shared/corpus + worlds
    python bench/pretrain.py train --recipe paper   --steps 30000  # resumable: run it again to go on
    python bench/pretrain.py curve --recipe paper                  # the representation benchmark at each kept step
    python bench/pretrain.py ship --recipe paper                   # copy the run into src/ecovae/pretrained/

Every run keeps its weights at each checkpoint (``weights/step<N>.safetensors``), so the learning curve
(benchmark balanced accuracy against training CPU-minutes) is measured after the fact, on the same tasks,
folds and baselines as ``representation.py``. Results: ``bench/results/pretrain_<recipe>_curve.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, RESULTS, SHARED_DATA, write_results

from ecovae.corpus import CORPUS_FILE, build_corpus
from ecovae.host import hardware_info, package_versions
from ecovae.model import preset as model_preset
from ecovae.pretrained import CARD_JSON, CARD_MD
from ecovae.run import (
    CALIBRATION_FILE,
    CONFIG_FILE,
    RUN_FILE,
    WEIGHTS_FILE,
    save_calibration,
    weights_digest,
    write_json,
)
from ecovae.spectrogram import SpectrogramConfig
from ecovae.train import TrainConfig, calibration_windows, plan_training, train, train_preset, training_data

SHARED_CORPUS = SHARED_DATA.parent / "corpus"
# Each recipe: settings over the preset's own (ecovae.train.TrainConfig; under "model", ecovae.model.VAEConfig's).
# "paper" is how every run trained before: the preset's rate, a cosine to zero, no warm-up, no average, no
# augmentation, beta 1 and no free bits.
RECIPES = {
    "paper": {},
    "beta_half": {"model": {"beta": 0.5}},
    "free_bits": {"model": {"free_bits": 2.0}},
    "ema_aug": {
        "warmup_steps": 500,
        "ema_decay": 0.999,
        "gain_db": 6.0,
        "response_db": 3.0,
        "mix_chance": 0.25,
        "jitter": True,
    },
}


def corpus(args) -> Path:
    out = Path(args.work) / "corpus"
    info = build_corpus(
        out,
        real=[p for p in (SHARED_DATA, SHARED_CORPUS) if (p / "MANIFEST.csv").is_file()],  # a GPU machine: its copy
        worlds=args.worlds,
        sites_per_world=3,
        recordings_per_site=4,
        duration_s=30.0,
    )
    print(json.dumps({k: info[k] for k in ("real_minutes", "simulated", "left_out")}, indent=1))
    return out


def run_dir(args) -> Path:
    return Path(args.work) / f"run_{args.recipe}_{args.preset}_seed{args.seed}"


def train_recipe(args) -> None:
    folder, out = corpus(args), run_dir(args)
    steps = args.steps
    if args.minutes and not (out / "checkpoints").is_dir():  # as many steps as fit, measured here
        steps = plan_training(args.minutes, preset_name=args.preset, accelerator=args.accelerator, fit_budget=True)
        print(f"[plan] {steps.describe()}")
        steps = steps.max_steps
    recipe = dict(RECIPES[args.recipe])
    mcfg = model_preset(args.preset, **recipe.pop("model", {}))
    tcfg = train_preset(
        args.preset,
        max_steps=steps,
        accelerator=args.accelerator,
        seed=args.seed,
        checkpoint_every=args.keep_every,
        val_every=args.keep_every,
        keep_weights=True,
        **recipe,
    )
    t0 = time.time()
    manifest = train(folder, out, tcfg, mcfg=mcfg, resume=(out / "checkpoints").is_dir(), progress=True)
    print(f"{manifest['global_step']} steps, {manifest['wall_time_s']:.0f} s in all ({time.time() - t0:.0f} s now)")


def _snapshot_folder(run: Path, weights: Path, work: Path) -> Path:
    """A run folder holding one kept step's weights (links: nothing copied)."""
    folder = work / "snapshots" / run.name / weights.stem
    folder.mkdir(parents=True, exist_ok=True)
    for name, src in ((CONFIG_FILE, run / CONFIG_FILE), (WEIGHTS_FILE, weights), (CALIBRATION_FILE, None)):
        if src is not None and not (folder / name).exists():
            os.symlink(src.resolve(), folder / name)
    return folder


def _result(args, weights: Path) -> Path:
    return RESULTS / f"pretrain_{args.recipe}_step{int(weights.stem.removeprefix('step'))}.json"


def curve(args) -> None:
    run = run_dir(args)
    kept = sorted((run / "weights").glob("step*.safetensors"))
    # the steps of the curve: every --every-nth multiple of --keep-every (time-based checkpoints fall between)
    kept = [w for w in kept if int(w.stem.removeprefix("step")) % (args.keep_every * args.every_nth) == 0]
    if args.steps_wanted:
        kept = [w for w in kept if int(w.stem.removeprefix("step")) in args.steps_wanted]
    points = []
    measured = [w for w in sorted((run / "weights").glob("step*.safetensors")) if _result(args, w).is_file()]
    for weights in sorted(set(kept) | set(measured)):  # what is asked, and every step measured before
        step = int(weights.stem.removeprefix("step"))
        out = _result(args, weights)
        if not out.is_file():
            folder = _snapshot_folder(run, weights, Path(args.work))
            cmd = [sys.executable, str(REPO / "bench" / "representation.py"), "--model", str(folder)]
            cmd += ["--cv-repeats", str(args.cv_repeats), "--baselines", args.baselines, "--out", str(out)]
            cmd += ["--work", str(Path(args.work) / "bench"), "--unsaturated"]
            subprocess.run(cmd, check=True)
        verdicts = json.loads(out.read_text())["verdicts"]
        points.append(
            {
                "step": step,
                "minutes": round(json.loads(weights.with_suffix(".json").read_text())["seconds"] / 60, 1),
                "digest": weights_digest(_snapshot_folder(run, weights, Path(args.work))),
                **{v["task"]: v.get("vae_best_minus_logmel_best") for v in verdicts if not v["saturated"]},
            }
        )
    tasks = [k for k in points[0] if k not in ("step", "minutes", "digest")] if points else []
    md = [f"**Learning curve: recipe {args.recipe}, preset {args.preset}** (best VAE minus best log-mel)", ""]
    md += ["| step | minutes | " + " | ".join(tasks) + " |", "|---" * (2 + len(tasks)) + "|"]
    md += [
        f"| {p['step']} | {p['minutes']} | " + " | ".join(f"{p[t]:+.3f}" for t in tasks) + " |"
        for p in points
        if all(p[t] is not None for t in tasks)
    ]
    print("\n".join(md))
    out = RESULTS / f"pretrain_{args.recipe}_curve.json"
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    write_results("pretrain_curve", {"recipe": args.recipe, "settings": RECIPES[args.recipe], "points": points}, out)


def _shipped_manifest(run: Path, step: int, seconds: float, data) -> dict:
    """run.json for the package: the pretraining's record, with no path of this machine in it."""
    manifest = json.loads((run / RUN_FILE).read_text()) if (run / RUN_FILE).is_file() else {}
    return {
        **{k: v for k, v in manifest.items() if k not in ("recordings", "attempt_log")},
        "recordings": "the pretraining corpus (MODEL_CARD.md)",
        "global_step": step,
        "wall_time_s": seconds,
        "hardware": manifest.get("hardware") or hardware_info(),
        "versions": manifest.get("versions") or package_versions(),
        "data": {
            "recordings_used": len(data.recordings),
            "hours": round(sum(r.seconds for r in data.recordings) / 3600, 4),
            "train_recordings": [r.relpath for r in data.train],
            "val_recordings": [r.relpath for r in data.val],
            "window_frames": data.window,
            "skipped": {},
        },
    }


def ship(args) -> None:
    """The run's weights at ``--step`` (default: the last kept) into src/ecovae/pretrained/, with its config,
    calibration windows (drawn from the corpus's training recordings, as training draws them), run.json and
    model card. The benchmark table is the one measured for that step (``curve``), if there is one."""
    run, dest = run_dir(args), Path(args.dest)
    kept = sorted((run / "weights").glob("step*.safetensors"))
    weights = next((w for w in kept if int(w.stem.removeprefix("step")) == args.step), None) if args.step else kept[-1]
    if weights is None:
        raise SystemExit(f"no kept weights at step {args.step} in {run / 'weights'}")
    step = int(weights.stem.removeprefix("step"))
    kept_at = json.loads(weights.with_suffix(".json").read_text())
    seconds = kept_at["seconds"]
    config = json.loads((run / CONFIG_FILE).read_text())
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, dest / WEIGHTS_FILE)
    write_json(dest / CONFIG_FILE, {**config, "parent": None})
    folder = Path(args.work) / "corpus"
    data = training_data(folder, spec=SpectrogramConfig(**config["spectrogram"]), tcfg=TrainConfig(**config["train"]))
    save_calibration(dest, calibration_windows(data.train, config["spectrogram"]["frame_hops"], seed=args.seed))
    write_json(dest / RUN_FILE, _shipped_manifest(run, step, seconds, data))
    corpus_info = json.loads((folder / CORPUS_FILE).read_text())
    table = RESULTS / f"pretrain_{args.recipe}_step{step}.md"
    card = {
        "name": f"ecovae-{args.preset}-{args.recipe}",
        "weights_digest": weights_digest(dest),
        "preset": args.preset,
        "recipe": {"name": args.recipe, **RECIPES[args.recipe]},
        "train": config["train"],
        "steps": step,
        "wall_time_s": seconds,
        "machine": {**hardware_info(), "torch_threads": kept_at.get("torch_threads", args.train_threads)},
        "corpus": {
            "real": [{**s, "source": s["source"]} for s in corpus_info["real"]],
            "real_minutes": corpus_info["real_minutes"],
            "left_out": [{"path": Path(x["path"]).name, "why": x["why"]} for x in corpus_info["left_out"]],
            "simulated": corpus_info["simulated"],
            "validation_recordings": len(data.val),
        },
        "benchmark": str(table.relative_to(REPO)) if table.is_file() else None,
        "note": args.note,
    }
    write_json(dest / CARD_JSON, card)
    (dest / CARD_MD).write_text(model_card_markdown(card, table.read_text() if table.is_file() else None))
    size = sum(p.stat().st_size for p in dest.iterdir()) / 1e6
    print(f"shipped step {step} of {run} to {dest}: {size:.1f} MB, digest {card['weights_digest']}")


def _short(licences: list[str]) -> str:
    """Licence names without their notes (MODEL_CARD.json keeps them whole)."""
    return ", ".join(sorted({x.split(" (")[0] for x in licences}))


def model_card_markdown(card: dict, table: str | None) -> str:
    corpus = card["corpus"]
    sim = corpus["simulated"]
    lines = [
        f"# {card['name']}: the pretrained model that ships with ecovae",
        "",
        f"The `{card['preset']}` preset of the soundscape VAE (the paper's layer table, docs/model.md; widths in "
        "`ecovae.model.PRESETS`), trained self-supervised (no labels) on the corpus below. Use it with "
        "`--model pretrained`, or fine-tune it on a survey with `--init pretrained`.",
        "",
        "## Corpus",
        "",
        "| source | files | minutes | licence |",
        "|---|---|---|---|",
        *[f"| {s['source']} | {s['files']} | {s['minutes']} | {_short(s['licences'])} |" for s in corpus["real"]],
        f"| simulated worlds ({sim['settings']['worlds']} worlds × {sim['settings']['sites_per_world']} sites) | "
        f"{sim['recordings']} | {sim['minutes']} | {sim['licence']} |",
        "",
        f"Real audio: {corpus['real_minutes']} minutes. Left out: "
        + ("; ".join(f"{x['path']} ({x['why']})" for x in corpus["left_out"]) or "nothing")
        + f". Simulated species: {sim['species']}. {corpus['validation_recordings']} recordings held out for "
        "validation (chosen by the seed, by recording).",
        "",
        "## Training",
        "",
        f"- recipe `{card['recipe']['name']}`: "
        + ", ".join(f"{k} {v}" for k, v in card["recipe"].items() if k != "name")
        + f"; AdamW, peak rate {card['train']['learning_rate']}, batch {card['train']['batch_size']} windows of "
        f"{card['train']['window_frames']} frames, cosine to zero over {card['train']['max_steps']} steps",
        f"- {card['steps']:,} steps in {card['wall_time_s'] / 60:.0f} minutes on {card['machine'].get('cpu_model')} "
        f"({card['machine'].get('torch_threads')} torch threads; {card['machine'].get('cpu_capability')})",
        *([f"- {card['note']}"] if card.get("note") else []),
        f"- weights digest `{card['weights_digest']}` (SHA-256 of model.safetensors, first 16 hex digits)",
        "",
        "## Benchmark",
        "",
        table or "Not benchmarked yet.",
        "",
    ]
    return "\n".join(lines)


def compare(args) -> None:
    """One table from representation.py's results: the VAE from scratch, pretrained, and fine-tuned, against the
    baselines (taken from the pretrained model's run: the same units and folds), each feature set's best
    descriptor, and its best temporal descriptor against its time average."""
    import pandas as pd

    models = dict(zip(("from scratch", "pretrained", "fine-tuned"), args.compare, strict=False))
    rows = []
    for name, path in models.items():
        table = pd.DataFrame(json.loads((RESULTS / path).read_text())["table"])
        keep = table["features"] == "vae" if name != "pretrained" else table["features"].notna()
        rows.append(table[keep].assign(features=table["features"].where(table["features"] != "vae", f"vae {name}")))
    table = pd.concat(rows, ignore_index=True)
    md = [
        "| task | features | best descriptor / classifier | balanced accuracy | best temporal − mean |",
        "|---" * 5 + "|",
    ]
    for task, t in table.groupby("task", sort=False):
        for feats, f in t.groupby("features", sort=False):
            best = f.sort_values("mean", ascending=False).iloc[0]
            temporal = (
                f[f.descriptor.isin(("moments", "mixture"))]["mean"].max() - f[f.descriptor == "mean"]["mean"].max()
            )
            md.append(
                f"| {task} | {feats} | {best.descriptor} / {best.classifier} | {best['mean']:.3f} ± {best['std']:.3f} "
                f"| {temporal:+.3f} |"
            )
    out = RESULTS / "pretrain_table.md"
    out.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    write_results("pretrain_table", {"models": models, "table": table.to_dict("records")}, out.with_suffix(".json"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", nargs="?", default="train", choices=["corpus", "train", "curve", "ship", "compare"])
    p.add_argument(
        "--compare",
        nargs="+",
        help="compare: representation.py results (JSON names in bench/results) of the models from scratch, "
        "pretrained, and (if measured) fine-tuned",
    )
    p.add_argument("--recipe", default="paper", choices=sorted(RECIPES))
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=30_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, help="train: as many steps as fit this many minutes here (not --steps)")
    p.add_argument("--accelerator", default="auto", help="train: Lightning's (auto, cpu, gpu)")
    p.add_argument("--step", type=int, help="ship: the kept step to ship (default: the last)")
    p.add_argument("--note", help="ship: a line for the model card's training section (how it was run)")
    p.add_argument("--train-threads", type=int, help="ship: torch threads the run trained with, if not recorded")
    p.add_argument("--keep-every", type=int, default=1000, help="steps between kept weights (the curve's points)")
    p.add_argument("--every-nth", type=int, default=1, help="curve: benchmark every n-th multiple of --keep-every")
    p.add_argument("--steps-wanted", type=lambda s: [int(x) for x in s.split(",")], help="curve: only these kept steps")
    p.add_argument("--cv-repeats", type=int, default=2)
    p.add_argument("--baselines", default="logmel")
    p.add_argument("--worlds", type=int, default=60)
    p.add_argument("--work", default=os.environ.get("ECOVAE_PRETRAIN_WORK", "/tmp/ecovae-pretrain"))
    p.add_argument("--dest", default=str(REPO / "src" / "ecovae" / "pretrained"), help="ship: where to")
    p.add_argument("--smoke", action="store_true", help="corpus, train and ship at toy sizes, in --work (seconds)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.smoke:  # the real recordings, two small worlds, a tiny model for 4 steps, shipped beside it
        args.preset, args.steps, args.keep_every, args.worlds, args.minutes = "tiny", 4, 2, 2, None
        args.dest = str(Path(args.work) / "shipped")
        for what in (train_recipe, ship):
            what(args)
        return
    {"corpus": corpus, "train": train_recipe, "curve": curve, "ship": ship, "compare": compare}[args.what](args)


if __name__ == "__main__":
    main()
