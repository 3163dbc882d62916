"""Resuming over a very large folder: time to find what is left when (nearly) everything is done.

Makes a folder of N placeholder files (not audio: resuming must never open them) and an
output dataset whose part footers list all but one of them as done, then times
``ecovae encode`` finding the one file left and encoding it. The baseline is the same run over a
folder of 1,000 files, so the figure shows how the cost grows with the archive.

    python bench/resume_index.py [--files 100000] [--smoke]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common import table, timed, write_results

from ecovae.encode import encode
from ecovae.latents import latents_schema
from ecovae.model import preset
from ecovae.parts import write_part
from ecovae.run import init_run

FILES_PER_PART = 500


def make_archive(root: Path, out: Path, run: Path, n: int) -> None:
    """``n`` placeholder files, all but the last listed as done in parts of ``out``."""
    from ecovae.run import weights_digest

    names = [f"site{i % 50:02d}/20240101_{i:06d}.wav" for i in range(n)]
    for rel in names:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")  # empty: reading one would fail loudly, and be counted as skipped
    schema = latents_schema(["site", "recorder"], preset("tiny").latent_dim)
    identity = {"weights": weights_digest(run), "offsets": {}, "offset_column": None}
    (out / "_tmp").mkdir(parents=True)
    # each listed with its size and mtime, as encode records them: resuming stats every file
    done = {}
    for rel in names[:-1]:
        st = (root / rel).stat()
        done[rel] = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "frames": 0,
            "silent": False,
            "truncated": None,
            "tail_s": 0.0,
        }
    rels = list(done)
    for i in range(0, len(rels), FILES_PER_PART):
        write_part(
            out,
            out / "_tmp",
            [],
            entries={r: done[r] for r in rels[i : i + FILES_PER_PART]},
            schema=schema,
            identity=identity,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--smoke", action="store_true", help="2,000 files")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    sizes = [1_000, 2_000 if args.smoke else args.files]
    work = Path(tempfile.mkdtemp(prefix="ecovae-resume-"))
    run = init_run(work / "run", preset("tiny"))
    rows = []
    for n in sizes:
        root, out = work / f"survey_{n}", work / f"latents_{n}"
        make_archive(root, out, run, n)
        summary, seconds = timed(encode, root, run, out, progress=False)
        rows.append(
            {
                "files": n,
                "already_done": summary.already_done,
                "skipped_now": len(summary.skipped),
                "resume_s": seconds,
                "us_per_file": 1e6 * seconds / n,
            }
        )
        shutil.rmtree(root)
    for r in rows:
        r["vs_first"] = r["resume_s"] / rows[0]["resume_s"]
    table(rows, ["files", "already_done", "skipped_now", "resume_s", "us_per_file", "vs_first"])
    write_results("resume_index" + ("_smoke" if args.smoke else ""), {"rows": rows}, args.out)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
