"""Exploring a survey by ear and eye: what the page of ``ecovae explore`` shows, computed here.

The map is every frame's posterior mean in 2-D (:mod:`ecovae.latent_map`), or every unit's mean with
``unit``/``window`` as elsewhere. Any point can be heard (its frame with 1.5 s either side, read from the
original recording when asked) and seen (its log-mel beside the VAE's reconstruction); any selection of
points can be heard one after another, decoded as one mean, broken down by site, hour and label, placed in the
day, and named: the name is appended to a labels CSV keyed like the latents, which ``evaluate``, ``describe``
and ``novelty`` take with ``--labels``. The page (:mod:`ecovae.explore_page`) only draws what this module
returns; audio is only ever read from a file the latents name.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ecovae.audio import open_recording, read_excerpt
from ecovae.descriptors import group_units
from ecovae.excerpts import EXCERPT_RATE, context_span
from ecovae.latent_map import latent_map, project
from ecovae.latents import (
    FRAME_KEY,
    RESERVED,
    add_labels,
    append_frame_labels,
    is_feature_column,
    read_latents,
    value_columns,
)
from ecovae.model import SoundscapeVAE
from ecovae.novelty import SCORES_FILE, score_columns
from ecovae.run import RunFolder, load_model
from ecovae.spectrogram import SpectrogramConfig, log_mel

log = logging.getLogger(__name__)

PLAYLIST_FRAMES = 24  # a selection is heard as at most this many of its frames (spread over it), one by one
PLAYLIST_CONTEXT_S = 0.25  # each with this much either side, and a short silence between
LISTED_FRAMES = 2_000  # the page lists at most this many of a selection's frames (all are saved)
CLUSTER_FIT = 20_000  # HDBSCAN is fitted on at most this many points (a seeded sample); the rest take the nearest's
DEFAULT_COLUMN = "sound"
TIME_OF_DAY, DATE, NOVELTY, KMEANS, HDBSCAN = "time of day", "date", "novelty", "k-means", "HDBSCAN"


@dataclass
class Colouring:
    """One value per point: a class code (``names`` gives each code's name; -1 for none) or a number."""

    values: np.ndarray  # float32
    names: list[str] | None  # categorical: the name of code i; None: continuous
    cyclic: bool = False  # time of day: 23:59 sits beside 00:00


@dataclass
class Explorer:
    """A survey's frames, their map, and where to read and decode their sound.

    >>> import numpy as np, pandas as pd
    >>> frames = pd.DataFrame({"path": ["a.wav"] * 3, "frame_in_recording": [0, 1, 2], "site": ["s1"] * 3})
    >>> ex = Explorer(frames=frames, mu=np.zeros((3, 2), np.float32), xy=np.zeros((3, 2), np.float32))
    >>> ex.n_points, ex.colour_choices(), ex.colour("site").names
    (3, ['site', 'k-means', 'HDBSCAN'], ['s1'])
    """

    frames: pd.DataFrame  # one row per frame: the latents' columns that are not features, in their order
    mu: np.ndarray  # (frames, D) float32: the posterior means
    xy: np.ndarray  # (points, 2): the map
    units: list[np.ndarray] | None = None  # each point's frame rows when a point is a unit; None: a frame each
    unit_names: list[str] | None = None
    root: Path | None = None  # the recordings' folder: None, nothing to listen to
    spec: SpectrogramConfig = SpectrogramConfig()
    model: SoundscapeVAE | None = None  # the decoder, for reconstructions and decoded means
    novelty: np.ndarray | None = None  # per frame, higher is rarer
    labels_file: Path | None = None
    column: str = DEFAULT_COLUMN
    seed: int = 0

    def __post_init__(self) -> None:
        self._paths = set(self.frames["path"].astype(str))
        self._times = pd.to_datetime(self.frames["frame_time"]) if "frame_time" in self.frames else None

    @property
    def n_points(self) -> int:
        return len(self.xy)

    # ----------------------------------------------------------------- points and frames
    def rows(self, points) -> np.ndarray:
        """The frame rows of some points (a unit's frames; a frame's own row)."""
        points = np.asarray(points, dtype=np.int64)
        if self.units is None:
            return points
        return np.concatenate([self.units[p] for p in points]) if len(points) else points

    def representative(self, point: int) -> int:
        """The frame to hear for a point: itself, or the unit's frame nearest its mean."""
        if self.units is None:
            return int(point)
        rows = self.units[point]
        mu = self.mu[rows]
        return int(rows[np.argmin(((mu - mu.mean(0)) ** 2).sum(1))])

    def point_frame(self, column: str) -> pd.Series:
        """A frame column as one value per point (a unit's first frame's)."""
        values = self.frames[column]
        return values if self.units is None else values.iloc[[r[0] for r in self.units]].reset_index(drop=True)

    def label_columns(self) -> list[str]:
        """The label columns, for colour and make-up: the latents' own and the names saved so far."""
        skip = {*RESERVED, "recorder_model"} - {"path"}
        return [c for c in self.frames.columns if c not in skip and not is_feature_column(c) and c != "path"]

    # ----------------------------------------------------------------- colour
    def colour_choices(self) -> list[str]:
        times = [TIME_OF_DAY, DATE] if self._times is not None and self._times.notna().any() else []
        return [*self.label_columns(), *times, *([NOVELTY] if self.novelty is not None else []), KMEANS, HDBSCAN]

    def colour(self, by: str, *, k: int = 8) -> Colouring:
        """The colour of every point by a label, the time of day (hours), the date (days since the first), the
        novelty score, or a clustering of mu (k-means) or of the map (HDBSCAN)."""
        if by == TIME_OF_DAY:
            t = self._point_times()
            return Colouring((t.dt.hour + t.dt.minute / 60 + t.dt.second / 3600).to_numpy(np.float32), None, True)
        if by == DATE:
            t = self._point_times()
            return Colouring(((t - t.min()).dt.total_seconds() / 86_400).to_numpy(np.float32), None)
        if by == NOVELTY and self.novelty is not None:
            scores = pd.Series(self.novelty)
            if self.units is not None:
                scores = pd.Series([np.nanmax(self.novelty[r]) for r in self.units])
            return Colouring(scores.to_numpy(np.float32), None)
        if by == KMEANS:
            return self._clusters(self._kmeans(k))
        if by == HDBSCAN:
            return self._clusters(self._hdbscan())
        if by not in self.label_columns():
            raise ValueError(f"cannot colour by {by!r}: choose one of {self.colour_choices()}")
        values = self.point_frame(by)
        codes, names = pd.factorize(values.astype("string"), sort=True)
        return Colouring(codes.astype(np.float32), [str(n) for n in names])

    def _point_times(self) -> pd.Series:
        if self._times is None:
            raise ValueError("the latents have no frame_time: times come from dates in the file names")
        return self._times if self.units is None else self._times.iloc[[r[0] for r in self.units]]

    @staticmethod
    def _clusters(codes: np.ndarray) -> Colouring:
        n = int(codes.max()) + 1 if len(codes) else 0
        return Colouring(codes.astype(np.float32), [f"cluster {i + 1}" for i in range(n)])

    def _kmeans(self, k: int) -> np.ndarray:
        from sklearn.cluster import MiniBatchKMeans

        x = self.mu if self.units is None else np.stack([self.mu[r].mean(0) for r in self.units])
        k = max(2, min(int(k), len(x)))
        return MiniBatchKMeans(k, random_state=self.seed, n_init=3, batch_size=4096).fit_predict(x)

    def _hdbscan(self) -> np.ndarray:
        from sklearn.cluster import HDBSCAN as Hdbscan
        from sklearn.neighbors import KNeighborsClassifier

        rng = np.random.default_rng(self.seed)
        n = self.n_points
        fit = np.sort(rng.choice(n, CLUSTER_FIT, replace=False)) if n > CLUSTER_FIT else np.arange(n)
        codes = Hdbscan(min_cluster_size=max(5, len(fit) // 100)).fit_predict(self.xy[fit])
        if len(fit) == n:
            return codes
        return KNeighborsClassifier(1).fit(self.xy[fit], codes).predict(self.xy)

    # ----------------------------------------------------------------- hover
    def hover_codes(self) -> dict[str, tuple[np.ndarray, list[str]]]:
        """Per point, a code into a list of names for the file (or unit) and each label: what hovering shows,
        sent as small integers rather than a million strings."""
        out = {}
        if self.units is not None:
            out["unit"] = (np.arange(self.n_points, dtype=np.int32), list(self.unit_names or []))
        for column in ["path", *self.label_columns()]:
            codes, names = pd.factorize(self.point_frame(column).astype("string"), sort=False)
            out[column] = (codes.astype(np.int32), [str(n) for n in names])
        return out

    def point_times_ms(self) -> np.ndarray:
        """Each point's time (ms since 1970, as the page's datetime axis wants; NaN if none)."""
        if self._times is None:
            return np.full(self.n_points, np.nan)
        t = self._point_times()
        ms = t.astype("int64").to_numpy() / 1e6
        return np.where(t.isna().to_numpy(), np.nan, ms)

    # ----------------------------------------------------------------- sound
    def _audio_of(self, path: str, start_s: float, seconds: float, rate: int) -> np.ndarray:
        if self.root is None:
            raise LookupError("no recordings to listen to: give --recordings or --model")
        rec = open_recording(self.root / path, self.root)
        return read_excerpt(rec, max(0.0, start_s), seconds, rate=rate)

    def frame_offset(self, row: int) -> float:
        f = self.frames.iloc[row]
        return (
            float(f["frame_offset_s"])
            if "frame_offset_s" in f
            else float(f["frame_in_recording"]) * self.spec.frame_seconds
        )

    def excerpt(self, row: int) -> bytes:
        """A frame with CONTEXT_S either side as WAV (peak-normalised), read from its recording now."""
        path, offset = str(self.frames["path"].iloc[row]), self.frame_offset(row)
        return self.excerpt_at(path, offset)

    def excerpt_at(self, path: str, offset_s: float) -> bytes:
        """The frame at ``offset_s`` of ``path`` with its context, as WAV; ``path`` must be one the latents name
        (PermissionError otherwise: the page's word for a file is never trusted)."""
        if path not in self._paths:
            raise PermissionError(f"{path!r} is not a recording of this survey")
        audio = self._audio_of(path, *context_span(offset_s, self.spec.frame_seconds), EXCERPT_RATE)
        return wav_bytes(audio, EXCERPT_RATE)

    def spectrograms(self, row: int) -> dict:
        """The frame's log-mel with its context (hops x mels), where the frame lies in it (s), and the VAE's
        reconstruction of the frame from its mu (None without a model)."""
        path, offset = str(self.frames["path"].iloc[row]), self.frame_offset(row)
        start, seconds = context_span(offset, self.spec.frame_seconds)
        rate = self.spec.sample_rate
        audio = self._audio_of(path, start, seconds, rate)
        logmel = log_mel(audio, self.spec).numpy()
        return {
            "logmel": logmel,
            "frame_s": (offset - start, offset - start + self.spec.frame_seconds),
            "seconds": len(audio) / rate,
            "reconstruction": self.decode(self.mu[row][None]),
        }

    def decode(self, mu: np.ndarray) -> np.ndarray | None:
        """The decoder's log-mel (hops x mels) of the mean of some rows of mu; None without a model."""
        if self.model is None or not len(mu):
            return None
        import torch

        with torch.no_grad():
            z = torch.from_numpy(np.asarray(mu, np.float32).mean(0)).reshape(1, 1, -1)
            return self.model.eval().decode(z)[0, 0].numpy()

    def decoded_audio(self, logmel: np.ndarray) -> bytes:
        """A decoded log-mel made audible (mel inversion and Griffin-Lim phase: where energy lies, not the
        recording)."""
        from ecovae.interpret import mel_to_audio

        return wav_bytes(mel_to_audio(logmel, self.spec, seed=self.seed), self.spec.sample_rate)

    def playlist(self, rows: np.ndarray) -> tuple[bytes, int]:
        """Up to PLAYLIST_FRAMES of the rows (spread evenly over them, in order), each frame with a little
        context and a short silence after it, as one WAV; and how many frames it holds. A frame whose file
        cannot be read now is left out."""
        rows = np.asarray(rows)
        if len(rows) > PLAYLIST_FRAMES:
            rows = rows[np.linspace(0, len(rows) - 1, PLAYLIST_FRAMES).round().astype(int)]
        gap = np.zeros(int(0.3 * EXCERPT_RATE), np.float32)
        pieces = []
        for row in rows:
            path, offset = str(self.frames["path"].iloc[row]), self.frame_offset(int(row))
            try:
                seconds = self.spec.frame_seconds + 2 * PLAYLIST_CONTEXT_S
                audio = self._audio_of(path, offset - PLAYLIST_CONTEXT_S, seconds, EXCERPT_RATE)
            except LookupError:
                raise
            except Exception as e:
                log.warning("left out of the playlist: %s", e)
                continue
            peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
            pieces += [audio * (0.9 / peak if peak > 0 else 1.0), gap]
        return wav_bytes(np.concatenate(pieces) if pieces else gap, EXCERPT_RATE), len(pieces) // 2

    # ----------------------------------------------------------------- a selection
    def listing(self, rows: np.ndarray) -> pd.DataFrame:
        """The first LISTED_FRAMES of the rows: file, frame, time and labels."""
        columns = [c for c in ("path", "frame_in_recording", "frame_offset_s", "frame_time") if c in self.frames]
        return self.frames.iloc[np.asarray(rows)[:LISTED_FRAMES]][columns + self.label_columns()]

    def makeup(self, rows: np.ndarray, by: str) -> pd.DataFrame:
        """What the selection is made of: each value of ``by`` (a label, or 'hour'), its share of the selection
        and of the survey, largest share first."""
        if by == "hour":
            if self._times is None:
                raise ValueError("the latents have no frame_time: no hour to break a selection down by")
            values = self._times.dt.hour.astype("string").str.zfill(2) + "h"
        elif by in self.frames:
            values = self.frames[by].astype("string")
        else:
            raise ValueError(f"no column {by!r} to break a selection down by")
        values = values.fillna("(none)")
        ours = values.iloc[np.asarray(rows)].value_counts(normalize=True)
        survey = values.value_counts(normalize=True)
        table = pd.DataFrame({"selection": ours, "survey": survey}).fillna(0.0)
        table = table[table["selection"] > 0].sort_values("selection", ascending=False)
        return table.rename_axis("value").reset_index()

    def diel(self, rows: np.ndarray, by: str | None = "site") -> pd.DataFrame:
        """When the selection's frames were recorded: the hour of the day, the date and the group (a value of
        ``by``) of each, and the group's place among all the survey's groups (one colour per group everywhere)."""
        if self._times is None:
            return pd.DataFrame({"hour": [], "date": [], "group": [], "code": []})
        rows = np.asarray(rows)
        t = self._times.iloc[rows]
        groups = self.frames[by].astype("string").fillna("(none)") if by in self.frames else None
        codes, names = pd.factorize(groups, sort=True) if groups is not None else (np.zeros(len(self.frames)), ["all"])
        table = pd.DataFrame(
            {
                "hour": (t.dt.hour + t.dt.minute / 60 + t.dt.second / 3600).to_numpy(),
                "date": t.dt.strftime("%Y-%m-%d").to_numpy(),
                "group": np.asarray(names, dtype=object)[codes[rows].astype(int)],
                "code": codes[rows].astype(int),
            }
        )
        return table.dropna(subset=["hour"]).reset_index(drop=True)

    def save(self, rows: np.ndarray, name: str) -> int:
        """Name the frames: appended to the labels file (:func:`ecovae.latents.append_frame_labels`) and shown
        at once in the page's colours. Returns the frames named."""
        name = name.strip()
        if not name:
            raise ValueError("give the selection a name")
        if self.labels_file is None:
            raise ValueError("no labels file to save to")
        rows = np.asarray(rows)
        append_frame_labels(self.labels_file, self.frames.iloc[rows][list(FRAME_KEY)], column=self.column, value=name)
        if self.column not in self.frames:
            self.frames[self.column] = pd.Series(pd.NA, index=self.frames.index, dtype="string")
        self.frames[self.column] = self.frames[self.column].astype("string")
        self.frames.iloc[rows, self.frames.columns.get_loc(self.column)] = name
        return len(rows)


def wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    """16-bit PCM WAV in memory."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1, 1), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def labels_column(path: Path, column: str | None) -> str:
    """The label column of a labels file the explorer appends to: its header's, or ``column`` for a new one."""
    if path.is_file() and path.stat().st_size:
        with path.open(newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
        if header[:2] != list(FRAME_KEY) or len(header) != 3:
            raise ValueError(f"{path}: not a labels file of the explorer (its columns are {header})")
        if column is not None and column != header[2]:
            raise ValueError(f"{path} names its frames' {header[2]!r}, not {column!r}: choose another labels file")
        return header[2]
    return column or DEFAULT_COLUMN


def open_explorer(
    latents: Path | str,
    *,
    model: Path | None = None,
    recordings: Path | None = None,
    novelty: Path | None = None,
    unit: str | None = None,
    window: str | None = None,
    labels: Path | None = None,
    column: str | None = None,
    method: str = "umap",
    seed: int = 0,
) -> Explorer:
    """The explorer of some latents: their map (cached beside them), the novelty scores of ``novelty`` (an
    ``ecovae novelty`` folder), the audio of ``recordings`` (default: the folder ``model`` was trained on) and
    ``model``'s decoder. Names are appended to ``labels`` (default: ``frame_labels.csv`` beside the latents),
    whose earlier names are read back first.

    >>> import tempfile, pathlib
    >>> from ecovae import pretrained_dir, simulate_survey
    >>> from ecovae.encode import encode
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "survey"
    >>> _ = simulate_survey(folder, n_sites=2, recorders_per_site=1, hours=(6.0,), duration_s=6.0)
    >>> summary = encode(folder, pretrained_dir(), folder.parent / "latents.parquet", progress=False)
    >>> ex = open_explorer(folder.parent / "latents.parquet", recordings=folder, method="pca")
    >>> ex.n_points, ex.makeup(ex.rows([0, 1, 2]), "site")["value"].tolist()
    (6, ['site1'])
    >>> ex.save(ex.rows([0, 1]), "dawn chorus"), ex.labels_file.name
    (2, 'frame_labels.csv')
    """
    latents = Path(latents)
    labels = Path(labels) if labels is not None else latents.with_name("frame_labels.csv")
    column = labels_column(labels, column)
    frames = read_latents(latents, left_out=("logvar_", "logmel_"))
    if labels.is_file() and labels.stat().st_size:
        frames = add_labels(frames, labels)
    mu = frames[value_columns(frames, "vae")].to_numpy(np.float32)
    meta = frames[[c for c in frames.columns if not is_feature_column(c)]].copy()
    del frames
    units = names = None
    if unit or window:
        # grouped as analysis groups them; one point feature (the row number) stands in for mu, which is not copied
        grouped = group_units(meta.assign(logmel_000=np.arange(len(meta))), unit, window, features="logmel")
        units, names = grouped.rows, grouped.meta["unit"].astype(str).tolist()
        xy = project(np.stack([mu[r].mean(0) for r in units]), method, seed).astype(np.float32)
    else:
        mapped = latent_map(latents, method=method, seed=seed)
        if len(mapped) != len(meta) or not (mapped["path"].to_numpy() == meta["path"].to_numpy()).all():
            raise ValueError(f"the map beside {latents} does not match its frames: delete it and run again")
        xy = mapped[["x", "y"]].to_numpy(np.float32)
    spec, decoder = SpectrogramConfig(), None
    if model is not None:
        decoder, spec = load_model(model)
        recordings = recordings or RunFolder(Path(model)).recordings()
    scores = None
    if novelty is not None:
        table = pd.read_parquet(Path(novelty) / SCORES_FILE)
        score = score_columns(table)[0]
        scores = meta[list(FRAME_KEY)].merge(table[[*FRAME_KEY, score]], on=list(FRAME_KEY), how="left")[score]
        scores = scores.to_numpy(np.float32)
    return Explorer(
        frames=meta,
        mu=mu,
        xy=xy,
        units=units,
        unit_names=names,
        root=Path(recordings) if recordings is not None else None,
        spec=spec,
        model=decoder,
        novelty=scores,
        labels_file=labels,
        column=column,
        seed=seed,
    )
