"""The log-mel cache: each recording's spectrogram computed once, kept on disk, read back a window at a time.

Training draws random windows from the whole survey, epoch after epoch.
Holding the survey's log-mel in memory (about 115 MB per hour of audio, on
every process of a distributed run) does not scale to an archive; decoding
the audio again for every window is slow. So each recording is turned into
log-mel once and written into shard files, and training reads the windows it
needs with positioned reads (not a memory map: the pages stay the kernel's
page cache, not the training process's memory), so a process holds its
batches, not the survey.

Layout: ``CACHE/<digest of the spectrogram settings>/shard-<id>.f32`` (raw
float32, each clip a (hops, mels) block) beside ``shard-<id>.json``, its
index, written after the shard: the commit point. The index lists each
recording the shard holds (absolute path, size and modification time when
read, duration, per-mel sums for the input normalisation, and where each clip
starts). A recording whose size or time changed is computed again; other
settings give another digest, so another folder. Runs that share a cache
(the processes of one distributed run, or two runs on one survey) take an OS
lock while adding to it, so each recording is computed once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ecovae.audio import Recording
from ecovae.files import atomic_file, fsync
from ecovae.spectrogram import SpectrogramConfig
from ecovae.survey import Survey

log = logging.getLogger(__name__)

SHARD_BYTES = 256 << 20  # a shard is committed once it holds this much (and at the end)
_FLOAT = np.dtype("<f4")


def default_cache_dir() -> Path:
    """``$ECOVAE_CACHE``, else ``$XDG_CACHE_HOME/ecovae``, else ``~/.cache/ecovae``."""
    if os.environ.get("ECOVAE_CACHE"):
        return Path(os.environ["ECOVAE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ecovae"


def settings_folder(cache: Path | str, spec: SpectrogramConfig) -> Path:
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache) / "logmel" / digest


@dataclass(frozen=True)
class CachedClip:
    """One clip's log-mel in a shard; slicing it reads those rows (hops) from disk."""

    file: str
    offset: int  # bytes from the start of the shard
    hops: int
    mels: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.hops, self.mels

    def __getitem__(self, rows: slice) -> torch.Tensor:
        start, stop, step = rows.indices(self.hops)
        if step != 1:
            raise IndexError("a cached clip reads contiguous rows only")
        n = max(0, stop - start) * self.mels
        data = os.pread(_fd(self.file), n * _FLOAT.itemsize, self.offset + start * self.mels * _FLOAT.itemsize)
        if len(data) != n * _FLOAT.itemsize:
            raise OSError(f"{self.file}: shard shorter than its index says (cache damaged? delete it to rebuild)")
        return torch.from_numpy(np.frombuffer(data, _FLOAT).reshape(-1, self.mels).copy())


@dataclass
class CachedRecording:
    """A recording of the survey whose log-mel is in the cache (what training needs of it)."""

    relpath: str
    labels: dict[str, str]
    clips: list[CachedClip]
    seconds: float
    sums: tuple[int, np.ndarray, np.ndarray] = field(repr=False)  # hops, per-mel sum and sum of squares

    @property
    def n_frames(self) -> int:
        return sum(c.hops for c in self.clips) // SpectrogramConfig.frame_hops

    def statistics(self) -> tuple[int, np.ndarray, np.ndarray]:
        return self.sums


def logmel_sums(clips: list[torch.Tensor]) -> tuple[int, np.ndarray, np.ndarray]:
    """Hops, and the per-mel sum and sum of squares (float64) of a recording's clips: the input normalisation's
    statistics, additive over recordings."""
    a = [np.asarray(c, dtype=np.float64) for c in clips]
    return sum(len(x) for x in a), sum(x.sum(0) for x in a), sum(np.square(x).sum(0) for x in a)


_FDS: OrderedDict[str, int] = OrderedDict()  # shard -> descriptor, most recently used last
_FDS_PID = os.getpid()
MAX_OPEN_SHARDS = 64  # a 10,000 h survey has ~4,500 shards: more than a process may hold open


def _fd(file: str) -> int:
    """An open descriptor for a shard, per process (DataLoader workers open their own), the least
    recently used closed beyond ``MAX_OPEN_SHARDS``."""
    global _FDS_PID
    if os.getpid() != _FDS_PID:  # a forked worker: the parent's descriptors are not its to close
        _FDS.clear()
        _FDS_PID = os.getpid()
    if file in _FDS:
        _FDS.move_to_end(file)
        return _FDS[file]
    while len(_FDS) >= MAX_OPEN_SHARDS:
        os.close(_FDS.popitem(last=False)[1])
    _FDS[file] = os.open(file, os.O_RDONLY)
    return _FDS[file]


def _key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def shard_index(folder: Path) -> dict[tuple[str, int, int], dict]:
    """(path, size, mtime_ns) -> entry, over every committed shard of a settings folder."""
    index: dict[tuple[str, int, int], dict] = {}
    for meta in sorted(folder.glob("shard-*.json")):
        try:
            shard = json.loads(meta.read_text())
        except (OSError, ValueError) as e:
            log.warning("log-mel cache: ignored unreadable index %s (%s)", meta, e)
            continue
        file = str(meta.with_suffix(".f32"))
        for entry in shard["recordings"]:
            index[(entry["path"], entry["size"], entry["mtime_ns"])] = {**entry, "file": file, "mels": shard["mels"]}
    return index


class _ShardWriter:
    """Appends recordings' clips to a new shard; commits it (data, then index) when full and at the end."""

    def __init__(self, folder: Path, mels: int):
        self.folder, self.mels = folder, mels
        self._open()

    def _open(self) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.data = self.folder / f"shard-{self.id}.f32"
        self.tmp = self.data.with_name(self.data.name + ".tmp")
        self.f = self.tmp.open("wb")
        self.entries: list[dict] = []
        self.bytes = 0

    def add(self, key: tuple[str, int, int], rec: Recording, clips: list[torch.Tensor]) -> dict:
        placed = []
        for c in clips:
            a = np.ascontiguousarray(c.numpy(), _FLOAT)
            placed.append([self.bytes, a.shape[0]])
            self.f.write(a.tobytes())
            self.bytes += a.nbytes
        _, s, s2 = logmel_sums(clips)
        entry = {
            "path": key[0],
            "size": key[1],
            "mtime_ns": key[2],
            "relpath": rec.relpath,
            "seconds": rec.duration_s,
            "clips": placed,
            "hops": int(sum(h for _, h in placed)),
            "sum": s.tolist(),
            "sumsq": s2.tolist(),
        }
        self.entries.append(entry)
        placed_in = {**entry, "file": str(self.data), "mels": self.mels}  # this shard, before a new one opens
        if self.bytes >= SHARD_BYTES:
            self.commit()
            self._open()
        return placed_in

    def commit(self) -> None:
        self.f.close()
        if not self.entries:
            self.tmp.unlink(missing_ok=True)
            return
        fsync(self.tmp)
        os.replace(self.tmp, self.data)
        with atomic_file(self.data.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps({"mels": self.mels, "recordings": self.entries}))


def cache_survey(survey: Survey, cache: Path | str | None = None, progress: bool = False) -> list[CachedRecording]:
    """Every readable recording of ``survey`` in the log-mel cache (computing those not there yet), in order.

    Unreadable and too-short files go into ``survey.skipped`` with their reason, as
    everywhere. Other processes adding to the same cache wait for this one (an OS lock).
    """
    folder = settings_folder(cache or default_cache_dir(), survey.spec)
    folder.mkdir(parents=True, exist_ok=True)
    keys: dict[str, tuple[str, int, int]] = {}
    for rel in survey.files:
        try:
            keys[rel] = _key(survey.root / rel)
        except OSError as e:
            survey.skipped[rel] = f"cannot stat file ({e.strerror})"
    with open(folder / "_lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        index = shard_index(folder)
        todo = [rel for rel in keys if keys[rel] not in index]
        if todo:
            log.info("log-mel cache %s: computing %d of %d recordings", folder, len(todo), len(keys))
            writer = _ShardWriter(folder, survey.spec.n_mels)
            try:
                for rec, clips in survey.recordings(todo, progress="Spectrograms" if progress else None):
                    index[keys[rec.relpath]] = writer.add(keys[rec.relpath], rec, [c.logmel for c in clips])
            finally:
                writer.commit()  # what was computed is kept, even if a later file stops the run
    out = []
    for rel, key in keys.items():
        e = index.get(key)
        if e is None:
            continue  # skipped by the reader: survey.skipped says why
        clips = [CachedClip(e["file"], offset, hops, e["mels"]) for offset, hops in e["clips"]]
        sums = (e["hops"], np.asarray(e["sum"]), np.asarray(e["sumsq"]))
        out.append(CachedRecording(rel, survey.labels.get(rel, {}), clips, e["seconds"], sums=sums))
    return out
