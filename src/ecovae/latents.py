"""The latents: the Parquet table that encoding writes and analysis reads.

One row per frame: the recording (``path``), its labels, where the frame sits
in time, the posterior (``mu_*``, ``logvar_*``) and the frame's mean log-mel
per band (``logmel_*``: the "no learning" baseline on the same frames, written
while encoding, so analysis never decodes the audio again for it).

``out`` ending in ``.parquet`` is one Parquet file; any other ``out`` is a
Parquet dataset: a folder of ``part-*.parquet`` files with one schema, which
pandas, pyarrow, DuckDB and R's arrow read as one table. Encoding commits work
in parts, each written under a temporary name and renamed (whole or absent),
a file's rows never split across parts. Each part's footer lists the files it
holds, as they were when encoded, and what encoded them: the done-index, read
without reading any rows. A single-file output is the parts merged at the end.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

RESERVED = (
    "path",
    "start_time",
    "frame_time",
    "utc_offset_min",
    "source_sample_rate",
    "source_channels",
    "clip_index",
    "frame_index",
    "frame_in_recording",
    "frame_offset_s",
    "silent",
)

# Per-frame feature sets: name -> (value prefix, log-variance prefix or None for point values).
FEATURE_SETS = {"vae": ("mu_", "logvar_"), "logmel": ("logmel_", None)}
BASELINE_PREFIXES = ("indices_", "birdnet_")  # per-window baseline tables (ecovae.baselines)
FEATURE_PREFIXES = ("mu_", "logvar_", "logmel_", *BASELINE_PREFIXES)


def feature_columns(prefix: str, dim: int) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(dim)]


def latent_columns(prefix: str, dim: int) -> list[str]:
    return feature_columns(f"{prefix}_", dim)


def label_column_names(columns: list[str]) -> dict[str, str]:
    """Label column -> output column (a label that clashes with a fixed column gets a ``label_`` prefix).

    Two labels that would share an output column (``frame_time`` beside ``label_frame_time``) are an error.
    """
    names = {c: (f"label_{c}" if c in RESERVED or c.startswith(FEATURE_PREFIXES) else c) for c in columns}
    seen: dict[str, str] = {}
    for c, name in names.items():
        if name in seen:
            raise ValueError(
                f"the label columns {seen[name]!r} and {c!r} would both be written as {name!r} "
                "(a label named like a column ecovae writes gets the prefix 'label_'); rename one"
            )
        seen[name] = c
    return names


def is_feature_column(name: str) -> bool:
    return name.startswith(FEATURE_PREFIXES) and name.rsplit("_", 1)[-1].isdigit()


def value_columns(frames: pd.DataFrame, features: str) -> list[str]:
    """The value columns of a per-frame feature set (``vae``: mu_*, ``logmel``: logmel_*), in order."""
    if features not in FEATURE_SETS:
        raise ValueError(f"features must be among {sorted(FEATURE_SETS)}, not {features!r}")
    prefix = FEATURE_SETS[features][0]
    cols = [c for c in frames.columns if c.startswith(prefix) and is_feature_column(c)]
    if not cols:
        raise ValueError(f"no {prefix}* columns in the latents: is this an 'ecovae encode' output?")
    return cols


def silent_frames(frames: pd.DataFrame) -> np.ndarray:
    """Which rows are digitally silent frames (none where the table has no ``silent`` column)."""
    return frames["silent"].to_numpy(bool).copy() if "silent" in frames else np.zeros(len(frames), bool)


# --------------------------------------------------------------------------- label types
# A label keeps its type, so that DuckDB's WHERE hour >= 6 and R's filter(hour >= 6) work on the output:
# whole numbers, numbers, dates and times (with their offset, as UTC instants) are found from every value of
# the column; anything else, or a mix, stays text. A code with a leading zero ("007") is text: it is a name.
_INT = re.compile(r"[+-]?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[+-]?((0|[1-9][0-9]*)(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?")
_OFFSET = re.compile(r"(Z|[+-][0-9]{2}:?[0-9]{2})")
CLOCK_NOTE = (
    "the recorder's clock as its file name gives it (AudioMoth: UTC unless set otherwise; Song Meter: local "
    "time); the instant is this minus utc_offset_min where that is known"
)
OFFSET_NOTE = "minutes the recorder's clock is ahead of UTC, from the file's metadata (AudioMoth); null if unknown"


def label_types(labels: dict[str, dict[str, str]], columns: list[str]) -> dict[str, pa.DataType]:
    """Each label column's type, from all its values (empty ones aside): int64, float64, date32,
    timestamp (UTC where every value gives its offset), or string."""
    types = {}
    for c in columns:
        values = {str(row.get(c) or "").strip() for row in labels.values()} - {""}
        types[c] = _type_of(values)
    return types


def _type_of(values: set[str]) -> pa.DataType:
    def every(pattern: re.Pattern) -> bool:
        return all(pattern.fullmatch(v) for v in values)

    if not values:
        return pa.string()
    if every(_INT) and all(abs(int(v)) < 2**63 for v in values):
        return pa.int64()
    if every(_FLOAT):
        return pa.float64()
    if every(_DATE) and _parses(values, dates=True):
        return pa.date32()
    offsets = []
    for v in values:
        m = _TIME.match(v)
        rest = v[m.end() :] if m else None
        if rest is None or (rest and not _OFFSET.fullmatch(rest)):
            return pa.string()
        offsets.append(bool(rest))
    if not _parses(values) or any(offsets) != all(offsets):
        return pa.string()  # a mix of times with and without their offset: no one instant to store
    return pa.timestamp("ms", tz="UTC") if all(offsets) else pa.timestamp("ms")


def _parses(values: set[str], dates: bool = False) -> bool:
    import datetime as dt

    try:
        for v in values:
            (dt.date.fromisoformat if dates else dt.datetime.fromisoformat)(v.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def typed_label(value: str | None, type_: pa.DataType):
    """One label value as its column's type (None where empty)."""
    import datetime as dt

    value = (value or "").strip()
    if not value:
        return None
    if pa.types.is_int64(type_):
        return int(value)
    if pa.types.is_float64(type_):
        return float(value)
    if pa.types.is_date32(type_):
        return dt.date.fromisoformat(value)
    if pa.types.is_timestamp(type_):
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return t.astimezone(dt.timezone.utc) if t.tzinfo else t
    return value


def labels_schema_path(out: Path) -> Path:
    """The label columns' types, written beside the latents for readers that want them declared (CSVW-like)."""
    return out.with_name(out.name.removesuffix(".parquet") + ".labels_schema.json")


def labels_schema(label_columns: list[str], types: dict[str, pa.DataType], source: str) -> dict:
    names = label_column_names(label_columns)
    return {
        "source": source,
        "columns": [{"name": names[c], "label": c, "type": str(types[c])} for c in label_columns],
        "times": {"start_time": CLOCK_NOTE, "frame_time": CLOCK_NOTE, "utc_offset_min": OFFSET_NOTE},
    }


def latents_schema(
    label_columns: list[str],
    latent_dim: int,
    n_mels: int = 64,
    *,
    types: dict[str, pa.DataType] | None = None,
) -> pa.Schema:
    """The schema of the latents Parquet file (see README, "Outputs"); labels are text unless ``types`` says."""
    names = label_column_names(label_columns)
    types = types or {}
    clock = {b"description": CLOCK_NOTE.encode()}
    return pa.schema(
        [pa.field("path", pa.string(), nullable=False)]
        + [pa.field(names[c], types.get(c, pa.string())) for c in label_columns]
        + [
            pa.field("start_time", pa.timestamp("ms"), metadata=clock),
            pa.field("frame_time", pa.timestamp("ms"), metadata=clock),
            pa.field("utc_offset_min", pa.int16(), metadata={b"description": OFFSET_NOTE.encode()}),
            pa.field("source_sample_rate", pa.int32()),
            pa.field("source_channels", pa.int16()),
            pa.field("clip_index", pa.int32()),
            pa.field("frame_index", pa.int32()),
            pa.field("frame_in_recording", pa.int32()),
            pa.field("frame_offset_s", pa.float64()),
            pa.field("silent", pa.bool_()),
        ]
        + [pa.field(c, pa.float32()) for c in latent_columns("mu", latent_dim)]
        + [pa.field(c, pa.float32()) for c in latent_columns("logvar", latent_dim)]
        + [pa.field(c, pa.float32()) for c in latent_columns("logmel", n_mels)]
    )


def read_latents(path: Path | str, *, left_out: tuple[str, ...] = ()) -> pd.DataFrame:
    """The per-frame latents written by ``ecovae encode`` (a Parquet file or dataset folder), without the
    columns whose names start with one of ``left_out`` (``("logvar_", "logmel_")``: the means alone, in a fifth
    of the memory).

    A missing, unreadable or empty one is an error that names it.

    >>> import tempfile, pathlib
    >>> from ecovae import simulate_survey
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "survey"
    >>> labels = simulate_survey(folder, n_sites=2, recorders_per_site=1, hours=(6.0,), duration_s=6.0)
    >>> from ecovae import pretrained_dir, read_latents
    >>> from ecovae.encode import encode
    >>> latents = folder.parent / "latents.parquet"
    >>> summary = encode(folder, pretrained_dir(), latents, progress=False, precision="fp32")
    >>> frames = read_latents(latents)
    >>> len(frames), frames["site"].tolist()  # 6 s: three whole frames of 1.536 s per recording
    (6, ['site1', 'site1', 'site1', 'site2', 'site2', 'site2'])
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such latents file or folder (make it with 'ecovae encode')")
    models = _models_in(path)
    if len(models) > 1:
        raise ValueError(
            f"{path} holds parts encoded by {len(models)} different models or settings ({'; '.join(models)}): "
            "every frame would be counted once per model; keep one model's parts per folder"
        )
    try:
        names = pq.ParquetDataset(path).schema.names if left_out else None
        table = pq.read_table(path, columns=[n for n in names if not n.startswith(left_out)] if names else None)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable Parquet latents file ({e})") from None
    if table.num_rows == 0:
        raise ValueError(
            f"{path} holds no frames (0 rows): encoding skipped every file? see the .summary.json beside it"
        )
    return table.to_pandas()


def _models_in(path: Path) -> list[str]:
    """What encoded each part of a dataset (weights digest and precision, from the footers); one file: one."""
    found = {}
    for part in list_parts(path) if path.is_dir() else []:
        identity = read_index(part)[1]
        if identity:
            key = json.dumps({"precision": "fp32", **identity}, sort_keys=True)
            found[key] = (
                f"weights {str(identity.get('weights'))[:12]}, {identity.get('precision', 'fp32')}, "
                f"correction {identity.get('offset_column') or 'none'}"
            )
    return list(found.values())


def summary_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".parquet") + ".summary.json")


def is_dataset(out: Path | str) -> bool:
    """A folder of parts (a Parquet dataset) unless ``out`` names a ``.parquet`` file."""
    return Path(out).suffix.lower() != ".parquet"


# Parquet footer metadata of every part (the done-index): the files in it, each with its size and
# mtime when encoded and its flags, and what encoded them.
FILES_KEY, IDENTITY_KEY = b"ecovae.files", b"ecovae.identity"


def damaged(path: Path, error: Exception) -> RuntimeError:
    return RuntimeError(f"{path} is damaged ({error}); move it away and run again: the files it held are encoded again")


def read_index(path: Path) -> tuple[dict[str, dict], dict | None]:
    """(entries by file, identity) from a part's footer.

    An older part lists only its files (``{}`` entries: size and mtime unknown);
    a file without a footer index: its path column, no identity.
    """
    try:
        meta = pq.read_metadata(path).metadata or {}
    except (pa.ArrowException, OSError) as e:
        raise damaged(path, e) from None
    if FILES_KEY in meta:
        files = json.loads(meta[FILES_KEY])
        entries = files if isinstance(files, dict) else {rel: {} for rel in files}
        return entries, json.loads(meta[IDENTITY_KEY])
    rels = pq.read_table(path, columns=["path"]).column("path").unique().to_pylist()
    return {rel: {} for rel in rels}, None


def list_parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


# --------------------------------------------------------------------------- labels keyed like the latents
# A labels CSV with a ``frame_in_recording`` column labels single frames (as ``ecovae explore`` writes them);
# one with ``path`` alone labels whole recordings. Either joins the latents' own labels, its values winning.
FRAME_KEY = ("path", "frame_in_recording")


def is_frame_labels(path: Path | str) -> bool:
    """Whether a labels CSV is keyed by frame (``path`` and ``frame_in_recording``) rather than by recording."""
    import csv

    with Path(path).open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    return set(FRAME_KEY) <= set(header)


def read_frame_labels(path: Path | str) -> pd.DataFrame:
    """A labels CSV keyed by ``path`` (and ``frame_in_recording``, if it has one), every other column a label
    kept as text; a key listed twice keeps its last row (a frame named again is renamed)."""
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path}: cannot read the labels CSV ({e})") from None
    key = [c for c in FRAME_KEY if c in table.columns]
    if "path" not in key:
        raise ValueError(f"{path}: a labels CSV needs a 'path' column; found {list(table.columns)}")
    if "frame_in_recording" in key:
        frame = pd.to_numeric(table["frame_in_recording"], errors="coerce")
        bad = table.index[frame.isna() | (frame % 1 != 0)]
        if len(bad):
            raise ValueError(
                f"{path}: line {bad[0] + 2}: frame_in_recording must be a whole number, "
                f"not {table['frame_in_recording'].iloc[bad[0]]!r}"
            )
        table["frame_in_recording"] = frame.astype("int64")
    labels = [c for c in table.columns if c not in key]
    if not labels:
        raise ValueError(f"{path}: no label column beside {key}")
    table = table.drop_duplicates(key, keep="last").replace({c: {"": None} for c in labels})
    return table.rename(columns=label_column_names(labels))


def add_labels(frames: pd.DataFrame, path: Path | str) -> pd.DataFrame:
    """The frames with the labels of a CSV (:func:`read_frame_labels`) joined on; where the frames already have
    a label of that name, the CSV's value replaces it and frames the CSV does not name keep theirs.

    >>> import tempfile, pathlib
    >>> import pandas as pd
    >>> csv = pathlib.Path(tempfile.mkdtemp()) / "sounds.csv"
    >>> _ = csv.write_text("path,frame_in_recording,sound\\na.wav,1,rain\\n")
    >>> frames = pd.DataFrame({"path": ["a.wav", "a.wav"], "frame_in_recording": [0, 1], "mu_000": [0.0, 1.0]})
    >>> add_labels(frames, csv)["sound"].tolist()
    [nan, 'rain']
    """
    import pandas as pd

    table = read_frame_labels(path)
    key = [c for c in FRAME_KEY if c in table.columns]
    if "frame_in_recording" in key and "frame_in_recording" not in frames.columns:
        raise ValueError(f"{path} labels frames, but the latents have no frame_in_recording column")
    joined = frames[key].merge(table, on=key, how="left", validate="many_to_one")
    unmatched = len(table) - len(table.merge(frames[key].drop_duplicates(), on=key))
    if unmatched:
        log.warning("%s: %d of its %d rows name no frame of the latents", path, unmatched, len(table))
    out = frames.copy()
    for c in table.columns.difference(key):
        values = joined[c].to_numpy(object)
        out[c] = values if c not in out else np.where(pd.notna(values), values, out[c].astype(object))
    return out


def append_frame_labels(path: Path | str, keys: pd.DataFrame, *, column: str, value: str) -> int:
    """Append ``value`` as the ``column`` label of each frame in ``keys`` (``path``, ``frame_in_recording``) to
    the labels CSV at ``path`` (made with its header if new). One write, then fsync: what was saved before is
    never rewritten, and each save is one write of whole rows, so a kill between saves loses nothing. Returns the
    rows written."""
    import csv
    import io
    import os

    path = Path(path)
    header = [*FRAME_KEY, column]
    if path.is_file() and path.stat().st_size:
        with path.open(newline="", encoding="utf-8-sig") as f:
            found = next(csv.reader(f), [])
        if found != header:
            raise ValueError(f"{path}: its columns are {found}, not {header}: choose another labels file")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    if not path.is_file() or not path.stat().st_size:
        writer.writerow(header)
    for p, frame in zip(keys["path"], keys["frame_in_recording"], strict=True):
        writer.writerow([p, int(frame), value])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = text.getvalue().encode()
        size = os.fstat(fd).st_size
        if size:  # a file that does not end its last row (made by hand, or cut short): the new rows start anew
            with path.open("rb") as f:
                f.seek(size - 1)
                data = (b"" if f.read(1) == b"\n" else b"\n") + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(keys)
