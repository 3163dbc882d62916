"""Encoding a folder of files: the Ray engine against the local one, on the same files and machine.

The local engine (one process for the model, with all threads, and decoding workers) is
the baseline; the Ray engine runs one task per CPU (one torch thread each) on a local Ray
cluster started by this script. Both write the same rows (checked here).

    python bench/encode_engines.py [--files 8 --minutes 10] [--preset full] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pandas as pd
from common import table, tiled_file, timed, write_results

from ecovae.encode import encode
from ecovae.model import preset
from ecovae.run import init_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of each file")
    ap.add_argument("--preset", default="full")
    ap.add_argument("--smoke", action="store_true", help="4 files of 30 s, tiny preset: checks the script runs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.smoke:
        args.files, args.minutes, args.preset = 4, 0.5, "tiny"
    import ray

    work = Path(tempfile.mkdtemp(prefix="ecovae-engines-"))
    run = init_run(work / "run", preset(args.preset))
    source = tiled_file(work / "audio", args.minutes * 60)
    folder = work / "survey"
    for i in range(args.files):
        (folder / f"site{i % 2}").mkdir(parents=True, exist_ok=True)
        (folder / f"site{i % 2}" / f"20240501_{i:02d}0000.wav").symlink_to(source)
    audio_s = args.files * args.minutes * 60
    cpus = len(os.sched_getaffinity(0))

    local, local_s = timed(encode, folder, run, work / "local.parquet", progress=False)
    ray.init(num_cpus=cpus, include_dashboard=False)
    try:
        _, startup_s = timed(ray.get, ray.remote(lambda: 1).remote())  # workers up before timing
        on_ray, ray_s = timed(encode, folder, run, work / "ray", engine="ray", progress=False)
    finally:
        ray.shutdown()
    key = ["path", "frame_in_recording"]
    a = pd.read_parquet(work / "local.parquet").sort_values(key).reset_index(drop=True)
    b = pd.read_parquet(work / "ray").sort_values(key).reset_index(drop=True)
    max_diff = float((a.filter(like="mu_") - b.filter(like="mu_")).abs().to_numpy().max())
    rows = [
        {
            "engine": "local",
            "files": local.encoded,
            "frames": local.frames,
            "wall_s": local_s,
            "rtf": audio_s / local_s,
        },
        {
            "engine": f"ray ({cpus} tasks x 1 thread)",
            "files": on_ray.encoded,
            "frames": on_ray.frames,
            "wall_s": ray_s,
            "rtf": audio_s / ray_s,
        },
    ]
    for r in rows:
        r["vs_local"] = rows[0]["wall_s"] / r["wall_s"]
    table(rows, ["engine", "files", "frames", "wall_s", "rtf", "vs_local"])
    print(
        f"rows equal: {len(a) == len(b)}; max |mu difference| {max_diff:.2e}; Ray start-up {startup_s:.1f} s (not timed)"
    )
    payload = {
        "preset": args.preset,
        "cpus": cpus,
        "audio_s": audio_s,
        "rows": rows,
        "max_mu_difference": max_diff,
        "rows_equal": len(a) == len(b),
        "ray_startup_s": startup_s,
        "ray_version": ray.__version__,
    }
    write_results("encode_engines" + ("_smoke" if args.smoke else ""), payload, args.out)


if __name__ == "__main__":
    main()
