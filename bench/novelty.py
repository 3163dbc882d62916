"""Where planted rare sounds rank: the novelty score's detection against the event's level.

Simulates the quickstart's survey (4 sites x 2 recorders x 3 days x 8 times of day, 12 s each: 1,344 frames)
with 4 planted events (2 sirens, 2 chainsaws) per seed, at each level over the ambient, encodes it for real
(``ecovae encode``, an untrained tiny run: the log-mel band means it writes do not depend on the model) and
ranks the frames with ``ecovae.novelty.novelty_scores`` (``logmel``). For each event: how many ordinary frames
(overlapping no event) rank before its best frame. The baseline, in the same run on the same frames: the
score without the soft clip of standardised features (``clip_sd=None``, how it ranked before).
With ``--train-steps N`` each survey trains its own tiny model first (as the quickstart does, 1,000 steps)
and the latents (``vae``) are ranked too, clipped and not.

    python bench/novelty.py [--seeds 0-6] [--levels 20,30,40] [--train-steps 0] [--smoke]
"""

from __future__ import annotations

import argparse
import tempfile
from itertools import product
from pathlib import Path

import numpy as np
from common import result_name, table, timed, write_results

from ecovae.encode import encode
from ecovae.latents import read_latents
from ecovae.model import preset
from ecovae.novelty import CLIP_SD, event_ranks, novelty_scores, read_events
from ecovae.run import init_run
from ecovae.simulate import simulate_survey
from ecovae.spectrogram import SpectrogramConfig
from ecovae.train import train, train_preset

QUICKSTART = dict(n_sites=4, hours=(0, 3, 6, 9, 12, 15, 18, 21), days=3, duration_s=12.0, habitats=2, rare_events=4)
SMOKE = dict(n_sites=2, hours=(0, 12), days=1, duration_s=6.0, habitats=2, rare_events=2)
SCORES = {"clipped": CLIP_SD, "not clipped (baseline)": None}


def _seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-6", help="survey seeds: 0-6 or 0,3,5")
    ap.add_argument("--levels", default="20,30,40", help="event levels over the ambient, dB")
    ap.add_argument("--train-steps", type=int, default=0, help="train a tiny model per survey; rank its latents too")
    ap.add_argument("--smoke", action="store_true", help="one small survey, one level")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    seeds, levels = _seeds(args.seeds), [float(x) for x in args.levels.split(",")]
    survey_kw, features = QUICKSTART, ("logmel", "vae") if args.train_steps else ("logmel",)
    if args.smoke:
        seeds, levels, survey_kw = [0], [30.0], SMOKE
    frame_s = SpectrogramConfig().frame_seconds
    events = []
    with tempfile.TemporaryDirectory(prefix="ecovae-bench-novelty-") as tmp:
        work = Path(tmp)
        untrained = init_run(work / "run", preset("tiny"))
        for level in levels:
            for seed in seeds:
                root = work / f"{level:g}_{seed}"
                _, sim_s = timed(simulate_survey, root, seed=seed, event_db=level, **survey_kw)
                run, train_s = untrained, 0.0
                if args.train_steps:
                    run = root / "run"
                    tcfg = train_preset("tiny", max_steps=args.train_steps, seed=seed)
                    _, train_s = timed(train, root, run, tcfg, labels_csv=root / "labels.csv", progress=False)
                _, enc_s = timed(encode, root, run, root / "latents.parquet", progress=False)
                frames = read_latents(root / "latents.parquet")
                known = read_events(root / "events.csv")
                for name, clip in SCORES.items():
                    scores, score_s = timed(novelty_scores, frames, features, clip_sd=clip)
                    for e in event_ranks(scores, known, frame_s):
                        for f in features:
                            events.append(
                                {
                                    "level_db": level,
                                    "seed": seed,
                                    "features": f,
                                    "score": name,
                                    "kind": e["kind"],
                                    "path": e["path"],
                                    "best_rank": e["best_rank"][f"novelty_{f}"],
                                    "ordinary_before": e["ordinary_before"][f"novelty_{f}"],
                                    "frames": len(frames),
                                    "score_s": score_s,
                                }
                            )
                print(
                    f"level {level:g} dB seed {seed}: simulated {sim_s:.0f} s, trained {train_s:.0f} s, "
                    f"encoded {enc_s:.0f} s",
                    flush=True,
                )
    rows = []
    for level, f, name, kind in product(levels, features, SCORES, sorted({e["kind"] for e in events})):
        before = [
            e["ordinary_before"]
            for e in events
            if (e["level_db"], e["features"], e["score"], e["kind"]) == (level, f, name, kind)
        ]
        rows.append(
            {
                "level_db": level,
                "features": f,
                "score": name,
                "kind": kind,
                "events": len(before),
                "first": sum(b == 0 for b in before),
                "within_2": sum(b <= 2 for b in before),
                "median_before": float(np.median(before)),
                "worst_before": max(before),
            }
        )
    print("\nordinary frames ranked before each planted event's best frame (first: none before it)")
    table(
        rows, ["level_db", "features", "score", "kind", "events", "first", "within_2", "median_before", "worst_before"]
    )
    write_results(
        result_name("novelty" + (f"_trained{args.train_steps}" if args.train_steps else ""), args.smoke),
        {
            "survey": {k: list(v) if isinstance(v, tuple) else v for k, v in survey_kw.items()},
            "seeds": seeds,
            "levels_db": levels,
            "clip_sd": CLIP_SD,
            "train_steps": args.train_steps,
            "rows": rows,
            "events": events,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
