import os, sys

os.environ["ECOVAE_CACHE"] = "/tmp/p12/cache"
from pathlib import Path
import pandas as pd, numpy as np
from ecovae.simulate import simulate_survey
from ecovae.encode import encode
from ecovae.latents import read_latents
from ecovae.novelty import novelty_scores
from ecovae.run import init_run
from ecovae.model import preset

out = Path("/tmp/p13/nov")
if not (out / "survey/labels.csv").exists():
    simulate_survey(
        out / "survey",
        n_sites=4,
        recorders_per_site=2,
        hours=(0, 3, 6, 9, 12, 15, 18, 21),
        days=1,
        duration_s=12,
        seed=0,
        habitats=2,
        rare_events=3,
    )
run = sys.argv[1] if len(sys.argv) > 1 else str(init_run(out / "run", preset("tiny")))
lat = out / f"lat_{Path(run).name}.parquet"
if not lat.exists():
    encode(out / "survey", run, lat, progress=False, precision="fp32")
f = read_latents(lat)
ev = pd.read_csv(out / "survey/events.csv")


def is_event(df):
    m = np.zeros(len(df), bool)
    for e in ev.itertuples():
        m |= (
            (df.path.values == e.path)
            & (df.frame_offset_s.values + 0.768 < e.end_s)
            & (df.frame_offset_s.values + 0.768 > e.start_s)
        )
    return m


for feats in ["logmel", "vae"]:
    for comps in [2, 4, 8]:
        s = novelty_scores(f, feats, components=comps)
        m = is_event(s)
        k = m.sum()
        top = s.nsmallest(k, "rank")
        print(
            feats,
            comps,
            "event frames",
            k,
            "of",
            len(s),
            "in top-k:",
            is_event(top).sum(),
            "ranks",
            sorted(s.loc[m, "rank"].astype(int).tolist()),
        )
s = novelty_scores(f, "logmel", components=4)
lab = pd.read_csv(out / "survey/labels.csv")
t = s.nsmallest(12, "rank")
print(t[["path", "frame_offset_s", "rank", "rain", "aircraft", "traffic", "wind", "rare_event", "hour"]].to_string())
print(ev)
