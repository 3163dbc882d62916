"""Training memory and speed: windows streamed from the log-mel cache against every clip held in memory.

Each configuration trains the same model the same number of steps in its own
process, on 1 h and on 10 h of real audio (a 10 min file of ../shared/data,
tiled, then hard-linked so that the survey has that many recordings at no
disk cost), and reports the process's peak RSS and training steps per second.

* ``streamed``: ``ecovae.train.train`` as it is: log-mel computed once into the
  cache, windows read from disk (the cache is filled before, in its own
  process, so the figures are those of training).
* ``in memory`` (the baseline: how training read its data before the cache):
  the same training with every clip read into memory first.

Goal: streamed peak RSS on 10 h within 10% of 1 h; streamed steps/s no worse than in memory.

    python bench/train_memory.py [--steps 300] [--hours 1,10] [--preset tiny] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from common import table, tiled_file, write_results

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from ecovae import train as t
    mode, survey, run, preset, steps = sys.argv[1:6]
    if mode == "in memory":
        streamed = t.cache_survey

        class InMemory(t.LoadedRecording):
            seconds = 0.0

        def in_memory(survey, cache=None, progress=False):
            out = []
            for r in streamed(survey, cache, progress):
                m = InMemory(r.relpath, r.labels, [c[0 : c.hops] for c in r.clips])
                m.seconds = r.seconds
                out.append(m)
            return out

        t.cache_survey = in_memory
    if mode == "fill":
        from ecovae.logmel_cache import cache_survey
        from ecovae.survey import open_survey
        cache_survey(open_survey(survey))
        manifest = {}
    else:
        manifest = t.train(survey, run, t.train_preset(preset, max_steps=int(steps)), progress=False)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "steps": manifest.get("global_step"), "wall_time_s": manifest.get("wall_time_s")}))
    """
)


def survey_of(work: Path, hours: float, piece: Path) -> Path:
    folder = work / f"survey_{hours:g}h"
    n = max(1, round(hours * 3600 / 600))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        link = folder / f"site{i % 4}" / f"2024{1 + i // 28 % 12:02d}{1 + i % 28:02d}_{i % 24:02d}0000.wav"
        link.parent.mkdir(exist_ok=True)
        if not link.exists():
            os.link(piece, link)
    return folder


def child(mode: str, survey: Path, run: Path, args, env: dict) -> dict:
    cmd = [sys.executable, "-c", CHILD, mode, str(survey), str(run), args.preset, str(args.steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} on {survey.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--hours", default="1,10", type=lambda s: [float(h) for h in s.split(",")])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--work", default=None, help="folder for the audio and the cache (default: a temporary one)")
    p.add_argument("--smoke", action="store_true", help="seconds, not minutes: the script runs end to end")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.smoke:
        args.steps, args.hours = 5, [0.1, 0.2]
    work = Path(args.work or tempfile.mkdtemp(prefix="ecovae-train-memory-"))
    piece = tiled_file(work / "audio", 600.0)
    env = {**os.environ, "ECOVAE_CACHE": str(work / "cache"), "PYTHONPATH": os.pathsep.join(sys.path)}
    rows = []
    for hours in args.hours:
        survey = survey_of(work, hours, piece)
        filled = child("fill", survey, work / "unused", args, env)
        for mode in ("in memory", "streamed"):
            r = child(mode, survey, work / f"run_{mode.replace(' ', '_')}_{hours:g}h", args, env)
            rows.append(
                {
                    "mode": mode,
                    "hours": hours,
                    "peak_rss_mb": round(r["peak_rss_mb"], 1),
                    "steps_per_s": round(r["steps"] / r["wall_time_s"], 3),
                    "cache_fill_peak_rss_mb": round(filled["peak_rss_mb"], 1),
                }
            )
            print(rows[-1], flush=True)
    table(rows, ["mode", "hours", "peak_rss_mb", "steps_per_s", "cache_fill_peak_rss_mb"])
    by = {(r["mode"], r["hours"]): r for r in rows}
    lo, hi = min(args.hours), max(args.hours)
    verdict = {
        "streamed_rss_ratio_high_to_low": by[("streamed", hi)]["peak_rss_mb"] / by[("streamed", lo)]["peak_rss_mb"],
        "in_memory_rss_ratio_high_to_low": by[("in memory", hi)]["peak_rss_mb"] / by[("in memory", lo)]["peak_rss_mb"],
        "streamed_over_in_memory_steps_per_s": {
            f"{h:g}h": by[("streamed", h)]["steps_per_s"] / by[("in memory", h)]["steps_per_s"] for h in args.hours
        },
    }
    print(json.dumps(verdict, indent=2))
    write_results(
        "train_memory", {"settings": {**vars(args), "out": None, "work": str(work)}, "rows": rows, **verdict}, args.out
    )


if __name__ == "__main__":
    main()
