import pandas as pd, numpy as np
from ecovae.latents import read_latents
from ecovae.novelty import novelty_scores

f = read_latents("/tmp/p13/nov/lat_run.parquet")
ev = pd.read_csv("/tmp/p13/nov/survey/events.csv")
s = novelty_scores(f, "logmel", components=2)
lm = [c for c in f.columns if c.startswith("logmel_")]
for e in ev.itertuples():
    g = f[f.path == e.path]
    r = s[s.path == e.path]
    print(e.kind, e.start_s, e.end_s)
    print(" offsets", g.frame_offset_s.round(2).tolist())
    print(" mean lm", np.round(g[lm].to_numpy().mean(1), 2).tolist())
    print(" rank   ", r["rank"].astype(int).tolist())
    print(" lm bands 0-63 step 8 for each frame:\n", np.round(g[lm].to_numpy()[:, ::8], 1))
