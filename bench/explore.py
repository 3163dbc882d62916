"""The explorer at survey scale: time to first paint and memory for 10^4, 10^5 and 10^6 frames, the map's one-off
cost, and the latency of one excerpt.

For each size, latents of that many frames are written (64-d mu from a mixture of 12 Gaussians, 1.536 s frames
of 10-minute recordings, two sites, times over a week), every recording a link to one real 10-minute file tiled
from ../shared/data. Measured, each in the same run:

- the baseline: reading the latents with pandas (``pd.read_parquet``), what any analysis of them costs first;
- the projection, once (``ecovae.latent_map``): PCA, and UMAP up to ``--umap-max`` frames (it fits on 50,000
  and places the rest);
- ``ecovae explore LATENTS --method pca --no-open`` started in its own process: seconds until it serves, then
  headless Chromium opens the page: seconds until Bokeh has drawn every point (the document idle, the map's
  source holding all frames), the server's peak memory (VmHWM) and the page's JavaScript heap;
- one excerpt: ``GET /audio?frame=N`` for 30 random frames (the frame with 1.5 s either side, read from the
  recording and encoded as WAV), median and 90th percentile.

    python bench/explore.py [--sizes 10000,100000,1000000] [--umap-max 100000] [--smoke] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from common import REPO, result_name, table, tiled_file, timed, write_results

from ecovae.latent_map import latent_map

FRAME_S, RECORDING_S = 1.536, 600.0
FRAMES_PER_RECORDING = int(RECORDING_S // FRAME_S)


def synthetic_latents(out: Path, audio: Path, n: int, *, dim: int = 64, seed: int = 0) -> Path:
    """``n`` frames of latents whose recordings are links to ``audio`` (under ``out.parent / 'survey'``)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(12, dim)).astype(np.float32)
    mu = centres[rng.integers(0, 12, n)] + rng.normal(size=(n, dim)).astype(np.float32)
    recording = np.arange(n) // FRAMES_PER_RECORDING
    frame = np.arange(n) % FRAMES_PER_RECORDING
    folder = out.parent / "survey"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"site{r % 2 + 1}/rec_{r:05d}.wav" for r in range(recording.max() + 1)]
    for name in names:
        link = folder / name
        link.parent.mkdir(exist_ok=True)
        if not link.exists():
            link.symlink_to(audio)
    start = pd.Timestamp("2024-05-01") + pd.to_timedelta(recording * 7 * 86_400 // (recording.max() + 1), unit="s")
    columns = {
        "path": pa.array(np.asarray(names, dtype=object)[recording]).dictionary_encode(),
        "site": pa.array(np.where(recording % 2, "site2", "site1")).dictionary_encode(),
        "frame_in_recording": frame,
        "frame_offset_s": frame * FRAME_S,
        "frame_time": start + pd.to_timedelta(frame * FRAME_S, unit="s"),
        **{f"mu_{i:03d}": mu[:, i] for i in range(dim)},
        **{f"logvar_{i:03d}": np.full(n, -2.0, np.float32) for i in range(dim)},
    }
    pq.write_table(pa.table(columns), out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1700,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve_and_paint(latents: Path, n: int, *, excerpts: int, seed: int) -> dict:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "ecovae", "explore", str(latents), "--method", "pca", "--no-open"]
    t0 = time.perf_counter()
    server = subprocess.Popen(
        [*command, "--port", str(port), "--recordings", str(latents.parent / "survey")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        while "ecovae explore: http://" not in (line := server.stdout.readline()):
            if not line and server.poll() is not None:
                raise RuntimeError(f"the explorer did not start: {server.stdout.read()}")
        ready_s = time.perf_counter() - t0
        browser = _browser()
        try:
            t1 = time.perf_counter()
            browser.get(f"http://127.0.0.1:{port}/")
            drawn = (
                "return !!window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].is_idle && "
                "Bokeh.documents[0].get_model_by_name('map_points').data.x.length"
            )
            while browser.execute_script(drawn) != n:
                time.sleep(0.05)
                if time.perf_counter() - t1 > 600:
                    raise RuntimeError("the page did not draw in 10 minutes")
            paint_s = time.perf_counter() - t1
            heap_mb = browser.execute_script("return performance.memory.usedJSHeapSize") / 2**20
        finally:
            browser.quit()
        rng = np.random.default_rng(seed)
        latency = []
        for frame in rng.integers(0, n, excerpts):
            t = time.perf_counter()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/audio?frame={frame}", timeout=60) as r:
                r.read()
            latency.append(time.perf_counter() - t)
        return {
            "server_ready_s": ready_s,
            "first_paint_s": paint_s,
            "server_peak_mb": _peak_rss_mb(server.pid),
            "page_heap_mb": heap_mb,
            "excerpt_median_ms": 1000 * float(np.median(latency)),
            "excerpt_p90_ms": 1000 * float(np.percentile(latency, 90)),
        }
    finally:
        server.kill()
        server.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--umap-max", type=int, default=100_000, help="UMAP timed up to this many frames")
    ap.add_argument("--excerpts", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="2,000 frames, a few excerpts: that it runs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    sizes = [2_000] if args.smoke else [int(s) for s in args.sizes.split(",")]
    excerpts = 3 if args.smoke else args.excerpts
    umap_max = 0 if args.smoke else args.umap_max  # its first call compiles (numba): a smoke run skips it
    work = Path(tempfile.mkdtemp(prefix="ecovae-explore-bench-"))
    audio = tiled_file(work / "audio", 60.0 if args.smoke else RECORDING_S)
    rows = []
    for n in sizes:
        folder = work / f"n{n}"
        folder.mkdir()
        latents = synthetic_latents(folder / "latents.parquet", audio, n, seed=args.seed)
        _, read_s = timed(pd.read_parquet, latents)  # the baseline
        _, pca_s = timed(latent_map, latents, method="pca", seed=args.seed)
        umap_s = timed(latent_map, latents, method="umap", seed=args.seed)[1] if n <= umap_max else None
        row = {"frames": n, "pandas_read_s": read_s, "pca_map_s": pca_s, "umap_map_s": umap_s}
        row |= serve_and_paint(latents, n, excerpts=excerpts, seed=args.seed)
        row["paint_over_read"] = row["first_paint_s"] / read_s
        rows.append(row)
        print(row, flush=True)
        shutil.rmtree(folder)
    columns = [
        "frames",
        "pandas_read_s",
        "pca_map_s",
        "umap_map_s",
        "server_ready_s",
        "first_paint_s",
        "paint_over_read",
        "server_peak_mb",
        "page_heap_mb",
        "excerpt_median_ms",
        "excerpt_p90_ms",
    ]
    print()
    table(rows, columns)
    shutil.rmtree(work, ignore_errors=True)
    write_results(result_name("explore", args.smoke), {"rows": rows, "baseline": "pandas.read_parquet"}, args.out)


if __name__ == "__main__":
    main()
