"""The representation benchmark: what the VAE's descriptors are worth against baselines on the same footing.

Every change to the model, training or descriptors is judged here. Tasks:

* a simulated multi-day survey (4 sites in 2 habitats x 2 recorders x 3 days x 12 times of day):
  site and habitat per site-recorder-day unit (``--unit site,recorder --window 1D``); sites of
  one habitat share their species and differ in their day (dawn chorus timing and strength,
  night insects, rush hours), so a time average cannot tell them apart but a distribution can;
* the real recordings of ../shared/data: the Jura diel series (96 x 10 s, one site) day/night and
  diel period per recording; behaviouR site and time of day (16 x 20 s; saturated so far).

Feature sets: the VAE (posteriors) and each baseline (log-mel band means per frame, scikit-maad
indices per 15.36 s window, BirdNET per 3 s window), each through the same descriptors (mean,
moments, mixture), the same classifiers and the same folds. Balanced accuracy is given as mean and
sd over ``--cv-repeats`` repeated grouped 5-fold CVs (different fold seeds) and over the training
seeds (``--train-seeds``, one model each, trained on the survey and the real recordings together).
Baselines are computed once and cached in the work folder.

    python bench/representation.py [--steps 1500] [--train-seeds 0,1] [--cv-repeats 5] [--work DIR]

Writes bench/results/representation.json and representation.md (the table for bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import RESULTS, SHARED_DATA, write_results

from ecovae import pipeline, precision
from ecovae.descriptors import group_units
from ecovae.evaluate import evaluate_descriptors
from ecovae.latents import read_latents
from ecovae.pretrained import resolve_model
from ecovae.run import RunFolder, load_model
from ecovae.simulate import simulate_survey
from ecovae.survey import open_survey

HOURS = tuple(float(h) for h in range(0, 24, 2))
TASKS = [  # name, data, target, unit, window, rows of the latents to keep (path prefix)
    ("sim: site per site-day", "sim", "site", "site,recorder", "1D", None),
    ("sim: habitat per site-day", "sim", "habitat", "site,recorder", "1D", None),
    ("Jura: day/night per recording", "real", "day_night", None, None, "maad_jura_diel/"),
    ("Jura: diel period per recording", "real", "diel_period", None, None, "maad_jura_diel/"),
    ("behaviouR: site per recording", "real", "site_or_habitat", None, None, "behaviour_soundscapes/"),
    ("behaviouR: time of day per recording", "real", "diel_period", None, None, "behaviour_soundscapes/"),
]
TEMPORAL = ("moments", "mixture")


def survey(work: Path, duration: float, days: int, hours: tuple[float, ...]) -> Path:
    out = work / "survey"
    if not (out / "labels.csv").is_file():
        simulate_survey(
            out, n_sites=4, recorders_per_site=2, hours=hours, days=days, duration_s=duration, seed=0, habitats=2
        )
    return out


def training_folder(work: Path, sim: Path) -> Path:
    """The survey and the real recordings side by side (links: nothing copied)."""
    folder = work / "train_data"
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in (("sim", sim), ("real", SHARED_DATA)):
        if not (folder / name).exists():
            os.symlink(target.resolve(), folder / name)
    return folder


UNSATURATED = ("sim: site per site-day", "Jura: day/night per recording", "Jura: diel period per recording")


def _wanted(task: tuple, args) -> bool:
    return not args.unsaturated or task[0] in UNSATURATED


def _slug(path: Path) -> str:
    return "_".join(Path(path).resolve().parts[-2:]).replace(".", "_")


def _steps_of(run_dir: Path) -> int | None:
    kept = (Path(run_dir) / "model.safetensors").resolve().with_suffix(".json")  # a pretraining snapshot's record
    for name, key in (("run.json", "global_step"), ("MODEL_CARD.json", "steps"), (kept, "step")):
        if (Path(run_dir) / name).is_file():
            return json.loads((Path(run_dir) / name).read_text()).get(key)
    return None


def _train(args, folder: Path, work: Path, train_seed: int) -> tuple[Path, dict]:
    """Train (or resume) one model on the benchmark's data; from ``args.init``'s weights when given."""
    out = work / f"run_{args.preset}_seed{train_seed}_{args.steps}"
    if args.train_precision != "32-true":
        out = out.with_name(f"{out.name}_{args.train_precision}")
    if args.init:
        out = out.with_name(f"{out.name}_from_{_slug(Path(args.init))}")
    t0 = time.time()
    preset = None if args.init else args.preset  # a fine-tune keeps its parent's
    training = pipeline.Training(
        preset=preset,
        max_steps=args.steps,
        seed=train_seed,
        device="cpu",
        precision=args.train_precision,
        init=args.init,
    )
    run_dir = pipeline.train_stage(open_survey(folder), pipeline.Settings(training=training, progress=False), out)
    manifest = RunFolder(run_dir).manifest
    return run_dir, {
        "seed": train_seed,
        "steps": manifest["global_step"],
        "wall_time_s": manifest["wall_time_s"],
        "heldout_neg_elbo": manifest["heldout"].get("final", {}).get("neg_elbo"),
        "hours": manifest["data"]["hours"],
        "this_call_s": round(time.time() - t0, 1),
        "init": str(args.init) if args.init else None,
    }


def _encode(survey, run_dir: Path, latents: Path, prec: str, refused: dict) -> None:
    settings = pipeline.Settings(encoding=pipeline.Encoding(precision=prec, device="cpu"), progress=False)
    try:
        pipeline.encode_stage(survey, settings, latents, run_dir=run_dir)
    except ValueError as e:  # refused by its check: measured anyway, to see what the check guards
        refused[prec] = str(e)
        logging.warning("%s; encoding with the check bypassed, for the benchmark only", e)
        bound, precision.CHECK_COSINE = precision.CHECK_COSINE, -1.0
        try:
            pipeline.encode_stage(survey, settings, latents, run_dir=run_dir)
        finally:
            precision.CHECK_COSINE = bound


def run(args) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sim = survey(work, args.duration, args.days, args.hours)
    data = {"sim": (sim, sim / "labels.csv"), "real": (SHARED_DATA, SHARED_DATA / "MANIFEST.csv")}
    folder = training_folder(work, sim)
    models, scores, refused = [], [], {}
    baselines: dict[str, dict] = {}
    for train_seed in args.train_seeds:
        if args.model:  # a model trained elsewhere (a pretraining snapshot, the shipped one): benchmarked as it is
            run_dir = Path(args.model)
            models.append({"seed": train_seed, "model": str(run_dir), "steps": _steps_of(run_dir)})
        else:
            run_dir, info = _train(args, folder, work, train_seed)
            models.append(info)
        # encoded latents are kept beside a model this script trained, in the work folder for one it did not
        out_dir = work / f"latents_{_slug(run_dir)}" if args.model else run_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        frames, surveys = {}, {}
        for name, (root, labels) in [(k, v) for k, v in data.items() if k in args.data]:
            surveys[name] = open_survey(root, labels, load_model(run_dir)[1])  # once, for encoding and baselines
            for prec in args.precisions:  # fp32 first: the baselines are evaluated beside it only
                latents = out_dir / (f"latents_{name}.parquet" if prec == "fp32" else f"latents_{name}_{prec}.parquet")
                _encode(surveys[name], run_dir, latents, prec, refused)
                frames[name, prec] = read_latents(latents)
        for task, name, target, unit, window, prefix in [t for t in TASKS if t[1] in args.data and _wanted(t, args)]:
            analysis = pipeline.Analysis(unit=unit, window=window, baselines=",".join(args.baselines))
            for prec in args.precisions:
                table = frames[name, prec]
                table = table if prefix is None else table[table["path"].str.startswith(prefix)]
                units = group_units(table, unit, window)
                if task not in baselines:  # the baselines do not depend on the model: once per task
                    baselines[task] = pipeline.baseline_features(
                        surveys[name], table, analysis=analysis, cache=work / f"cache_{name}", progress=False
                    )
                features = baselines[task] if prec == args.precisions[0] else None
                for cv_seed in range(args.cv_repeats):
                    t1 = time.time()
                    ev = evaluate_descriptors(
                        units, target, None, seed=cv_seed, features=features, unit=unit or "recording"
                    )
                    s = ev.summary[["features", "descriptor", "classifier", "balanced_accuracy"]].copy()
                    s["task"], s["train_seed"], s["cv_seed"], s["n_units"] = task, train_seed, cv_seed, ev.n_units
                    s["chance"], s["precision"] = ev.chance["balanced_accuracy"], prec
                    scores.append(s)
                    logging.info(
                        "%s (%s), training seed %d, CV seed %d: %.0f s",
                        task,
                        prec,
                        train_seed,
                        cv_seed,
                        time.time() - t1,
                    )
    scores = pd.concat(scores, ignore_index=True)
    scores.to_csv(args.out.with_name(args.out.stem + "_scores.csv"), index=False)
    return {"models": models, "scores": scores, "refused": refused}


def precision_fidelity(scores: pd.DataFrame, precisions: list[str]) -> list[dict]:
    """Per task and precision, the VAE's balanced accuracy against fp32's on the same models, folds and
    classifier seeds (only the encoder's arithmetic differs): the mean difference over every descriptor x
    classifier x CV seed, the largest difference of a descriptor x classifier's mean over CV seeds, and how
    many of the cells changed at all. On tasks of 16 recordings one prediction is worth 0.06."""
    keys = ["task", "descriptor", "classifier", "cv_seed", "train_seed"]
    vae = scores[scores.features == "vae"].pivot_table(index=keys, columns="precision", values="balanced_accuracy")
    rows = []
    for prec in precisions[1:]:
        diff = vae[prec] - vae[precisions[0]]
        for task, d in diff.groupby("task", sort=False):
            per_cell = d.groupby(["descriptor", "classifier"]).mean()
            rows.append(
                {
                    "task": task,
                    "precision": prec,
                    "mean_diff": float(d.mean()),
                    "max_abs_diff": float(per_cell.abs().max()),
                    "cells_changed": int((d != 0).sum()),
                    "cells": len(d),
                    "mean_within_0.01": bool(abs(d.mean()) <= 0.01),
                }
            )
    return rows


def summarise(scores: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Mean and sd per task x feature set x descriptor x classifier; the verdicts per task."""
    keys = ["task", "features", "descriptor", "classifier"]
    table = scores.groupby(keys, sort=False)["balanced_accuracy"].agg(["mean", "std", "count"]).reset_index()
    table = table.merge(scores.groupby("task")[["n_units", "chance"]].first().reset_index(), on="task")
    verdicts = []
    for task, t in table.groupby("task", sort=False):
        best = t.sort_values("mean", ascending=False).iloc[0]
        vae, logmel = t[t.features == "vae"], t[t.features == "logmel"]
        v = {
            "task": task,
            "winner": f"{best.features} {best.descriptor} / {best.classifier}",
            "winner_mean": best["mean"],
            "winner_sd": best["std"],
            "saturated": bool((t["mean"] >= 0.99).sum() >= 0.5 * len(t)),
        }
        if len(vae):
            temporal = vae[vae.descriptor.isin(TEMPORAL)]["mean"].max()
            v["vae_temporal_minus_vae_mean"] = temporal - vae[vae.descriptor == "mean"]["mean"].max()
        if len(vae) and len(logmel):
            v["vae_minus_logmel_same_descriptor"] = {
                d: vae[vae.descriptor == d]["mean"].max() - logmel[logmel.descriptor == d]["mean"].max()
                for d in vae.descriptor.unique()
            }
            v["vae_best_minus_logmel_best"] = vae["mean"].max() - logmel["mean"].max()
        verdicts.append(v)
    return table, verdicts


def markdown(table: pd.DataFrame, verdicts: list[dict], models: list[dict], args) -> str:
    if args.model:
        head = f"Model: {args.model} ({models[0]['steps']} steps), not trained here"
    else:
        head = f"Training: preset {args.preset}, {args.steps} steps, seeds {args.train_seeds}" + (
            f", from {args.init}" if args.init else ""
        )
    trained = [m for m in models if "wall_time_s" in m]
    lines = [
        head
        + ("; " if trained else "")
        + "; ".join(
            f"seed {m['seed']}: {m['wall_time_s']:.0f} s, held-out -ELBO {m['heldout_neg_elbo']:.1f}" for m in trained
        )
        + f". Balanced accuracy, mean ± sd over {args.cv_repeats} CV seeds × {len(args.train_seeds)} training seeds "
        "(baselines: CV seeds only).",
        "",
    ]
    for v in verdicts:
        t = table[table.task == v["task"]]
        lines += [
            f"**{v['task']}** ({int(t['n_units'].iloc[0])} units, chance {t['chance'].iloc[0]:.3f})"
            + (" (saturated)" if v["saturated"] else ""),
            "",
            "| features | descriptor | logreg | rf |",
            "|---|---|---|---|",
        ]
        for (feats, desc), g in t.groupby(["features", "descriptor"], sort=False):
            cells = {r.classifier: f"{r['mean']:.3f} ± {r['std']:.3f}" for _, r in g.iterrows()}
            lines.append(f"| {feats} | {desc} | {cells.get('logreg', '')} | {cells.get('rf', '')} |")
        lines += ["", f"Winner: {v['winner']} ({v['winner_mean']:.3f} ± {v['winner_sd']:.3f})."]
        if "vae_temporal_minus_vae_mean" in v:
            lines[-1] += (
                f" VAE best temporal (moments/mixture) minus VAE mean: {v['vae_temporal_minus_vae_mean']:+.3f}."
            )
        if "vae_minus_logmel_same_descriptor" in v:
            diffs = ", ".join(f"{d} {x:+.3f}" for d, x in v["vae_minus_logmel_same_descriptor"].items())
            lines[-1] += f" VAE minus log-mel, same descriptor: {diffs}."
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--train-seeds", default="0,1", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--cv-repeats", type=int, default=5)
    p.add_argument("--duration", type=float, default=20.0, help="seconds per simulated recording")
    p.add_argument("--baselines", default="logmel,indices,birdnet", type=lambda s: [x for x in s.split(",") if x])
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--hours", default=HOURS, type=lambda s: tuple(float(h) for h in s.split(",")))
    p.add_argument("--data", default="sim,real", type=lambda s: s.split(","), help="sim, real or both")
    p.add_argument("--train-precision", default="32-true", help="Lightning's: 32-true (training's default), bf16-mixed")
    p.add_argument(
        "--precisions",
        default="fp32",
        type=lambda s: s.split(","),
        help="encoder precisions (ecovae.precision), fp32 first: the others are compared with it",
    )
    p.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "ecovae-bench-representation"))
    p.add_argument("--out", type=Path, default=RESULTS / "representation.json")
    p.add_argument("--model", help="benchmark this run folder (or 'pretrained') as it is, instead of training")
    p.add_argument("--init", help="train from this run folder's weights (or 'pretrained'): fine-tuning")
    p.add_argument(
        "--unsaturated", action="store_true", help="only the tasks that tell methods apart (a learning curve's points)"
    )
    p.add_argument("--smoke", action="store_true", help="seconds, not an hour: the script runs end to end")
    args = p.parse_args()
    args.model, args.init = (resolve_model(m) if m else None for m in (args.model, args.init))
    if args.model:
        args.train_seeds = args.train_seeds[:1]  # one model: its CV seeds are the spread
    if args.smoke:
        args.steps, args.train_seeds, args.cv_repeats, args.duration, args.days = 10, [0], 1, 4.0, 2
        args.hours, args.baselines, args.data = (0.0, 6.0, 12.0, 18.0), ["logmel"], ["sim"]
        args.precisions = ["fp32"] + [m for m in ("int8",) if precision.unsupported(m) is None]
        args.work = str(args.out.parent / "work")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    t0 = time.time()
    result = run(args)
    scores = result["scores"]
    table, verdicts = summarise(scores[scores.precision == args.precisions[0]])
    fidelity = precision_fidelity(scores, args.precisions)
    for r in fidelity:
        r["refused_by_check"] = result["refused"].get(r["precision"])
    md = markdown(table, verdicts, result["models"], args)
    if fidelity:
        md += "\n**Encoder precision against fp32** (VAE balanced accuracy minus fp32's, same folds)\n\n"
        md += "| task | precision | mean difference | largest (descriptor x classifier) | cells changed |\n"
        md += "|---|---|---|---|---|\n"
        md += "\n".join(
            f"| {r['task']} | {r['precision']} | {r['mean_diff']:+.4f} | {r['max_abs_diff']:.4f} | "
            f"{r['cells_changed']} of {r['cells']} |"
            for r in fidelity
        )
        md += "\n"
        for prec, why in result["refused"].items():
            md += f"\n{prec} was refused by its check ({why}); measured with the check bypassed.\n"
    print(md)
    args.out.with_suffix(".md").write_text(md + "\n")
    write_results(
        "representation",
        {
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "work"},
            "models": result["models"],
            "table": table.to_dict("records"),
            "verdicts": verdicts,
            "precision_fidelity": fidelity,
            "refused_by_check": result["refused"],
            "wall_time_s": round(time.time() - t0, 1),
            "seconds_per_simulated_recording": args.duration,
        },
        args.out,
    )
    print(np.round(time.time() - t0), "s in all")


if __name__ == "__main__":
    main()
