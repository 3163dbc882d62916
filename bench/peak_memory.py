"""Peak memory (max RSS) encoding one long file, each length in its own process.

Encoding streams a recording block by block, so peak memory should not grow with its length:
the 2-hour figure is compared with the 10-minute one (the baseline) from the same run.

    python bench/peak_memory.py [--minutes 10 120] [--preset full] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import table, tiled_file, write_results

from ecovae.model import preset
from ecovae.run import init_run

CHILD = """
import json, resource, sys
from pathlib import Path
from ecovae.encode import encode
folder, run, out = map(Path, sys.argv[1:4])
s = encode(folder, run, out, progress=False)
print(json.dumps({"frames": s.frames, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 120])
    ap.add_argument("--preset", default="full")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.smoke:
        args.minutes, args.preset = [0.25, 1.0], "tiny"
    work = Path(tempfile.mkdtemp(prefix="ecovae-mem-"))
    run = init_run(work / "run", preset(args.preset))
    rows = []
    for minutes in args.minutes:
        path = tiled_file(work / "audio", minutes * 60)
        folder = work / f"only_{int(minutes * 60)}"
        folder.mkdir()
        (folder / path.name).symlink_to(path)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(folder), str(run), str(work / f"{folder.name}.parquet")],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append({"minutes": minutes, **json.loads(out.stdout.strip().splitlines()[-1])})
    for r in rows:
        r["vs_first"] = r["max_rss_mb"] / rows[0]["max_rss_mb"]
    table(rows, ["minutes", "frames", "max_rss_mb", "vs_first"])
    write_results("peak_memory" + ("_smoke" if args.smoke else ""), {"preset": args.preset, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
