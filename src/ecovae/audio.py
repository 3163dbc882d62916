"""Recordings in: find audio files, read them in blocks, downmix and resample.

Field archives hold broken files. Everything here that can fail on a file
raises :class:`BadAudio`, whose message names the file and the reason, so the
caller can log it, count it and go on with the next file. Nothing here ever
substitutes other audio for a broken file.

Audio is never read whole: :func:`iter_blocks` yields mono 48 kHz blocks of a
bounded size, so a 24-hour recording costs no more memory than a 1-minute one.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")

# Outside this range a header is corrupt rather than exotic; a 1 Hz "recording"
# resampled to 48 kHz would also exhaust memory.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 1_536_000
MAX_CHANNELS = 64
READ_BLOCK_SECONDS = 10.0


class BadAudio(Exception):
    """A file that cannot be used, with the reason. ``str()`` names the file."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class Recording:
    """One audio file of a survey, as found on disk (nothing decoded yet)."""

    path: Path  # absolute
    relpath: str  # POSIX path relative to the survey folder; the key for labels
    sample_rate: int  # the file's own rate; audio is resampled to 48 kHz on reading
    channels: int
    n_samples: int  # per channel, as the header says
    start_time: datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)
    truncated: str | None = None  # why the file seems cut short (it is read as far as it goes)
    utc_offset_min: int | None = None  # the recorder's clock minus UTC, where its metadata says (AudioMoth)

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate


def find_audio_files(root: Path | str, skipped: dict[str, str] | None = None) -> list[Path]:
    """All audio files under ``root`` (recursive), sorted by relative path.

    Links to folders are followed (a site folder linked into the survey is
    part of it); a link back to a folder already being walked (a loop), a
    broken link and an unreadable folder are logged and, if ``skipped`` is
    given, entered in it (relative path -> reason). Paths keep the name they
    were found under, not the link's target.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    found: list[Path] = []
    missed: dict[str, str] = {}
    visited: dict[tuple[int, int], str] = {}  # each folder searched once: no loops, no file twice

    def walk(folder: Path) -> None:
        try:
            # real folders before links, so a folder linked from elsewhere keeps its own name
            entries = sorted(os.scandir(folder), key=lambda e: (e.is_symlink(), e.name))
        except OSError as e:
            missed[_rel(folder, root) + "/"] = f"folder not readable ({e.strerror})"
            return
        for entry in entries:
            path = folder / entry.name
            if entry.name.startswith("."):  # hidden: .Trashes, ._AppleDouble, editor files
                continue
            try:
                is_dir = entry.is_dir()  # follows links
                is_file = not is_dir and entry.is_file()
            except OSError as e:
                is_dir = is_file = False
                if entry.name.lower().endswith(AUDIO_EXTENSIONS):
                    missed[_rel(path, root)] = f"cannot stat ({e.strerror})"
                continue
            if is_dir:
                try:
                    key = (os.stat(path).st_dev, os.stat(path).st_ino)
                except OSError as e:
                    missed[_rel(path, root) + "/"] = f"folder not readable ({e.strerror})"
                    continue
                if key in visited:  # a link to a folder above it (a loop) or one searched already
                    seen = visited[key] or "."
                    missed[_rel(path, root) + "/"] = f"link to a folder searched already ({seen}/)"
                    continue
                visited[key] = _rel(path, root)
                walk(path)
            elif is_file:
                if path.suffix.lower() in AUDIO_EXTENSIONS:
                    found.append(path)
            elif entry.is_symlink() and path.suffix.lower() in AUDIO_EXTENSIONS:
                missed[_rel(path, root)] = f"broken link to {os.readlink(path)}"

    top = os.stat(root)
    visited[(top.st_dev, top.st_ino)] = ""
    walk(root)
    for rel, reason in missed.items():
        log.warning("not searched: %s (%s)", rel, reason)
    if skipped is not None:
        skipped.update(missed)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# AudioMoth: 20190522_060000.WAV; Song Meter: S4A03895_20190522_060000.wav
# (optionally with a suffix such as _0+1_). Anchored on the date and time groups.
_TIME_PATTERN = re.compile(r"(?:^|[^0-9])(\d{8})[_T-](\d{6})(?:[^0-9]|$)")


def parse_start_time(name: str) -> datetime | None:
    """Start time from an AudioMoth or Song Meter file name, else None.

    The time is returned as written (naive): AudioMoth names are UTC by
    default, Song Meter names are the recorder's local time.
    """
    match = _TIME_PATTERN.search(Path(name).stem)
    if not match:
        return None
    try:
        return datetime.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M%S")
    except ValueError:
        return None


_SONG_METER_SERIAL = re.compile(r"^(S\d[A-Z]\d{5}|SM[A-Z0-9]+)_\d{8}_\d{6}", re.IGNORECASE)


def labels_from_layout(relpath: str) -> dict[str, str]:
    """Labels from the folder layout ``SITE/[RECORDER/]file``.

    The first folder is the site and a second one the recorder; a Song Meter
    serial at the start of the file name is the recorder when no folder says so.
    """
    parts = relpath.split("/")
    labels: dict[str, str] = {}
    if len(parts) >= 2:
        labels["site"] = parts[0]
    if len(parts) >= 3:
        labels["recorder"] = parts[1]
    serial = _SONG_METER_SERIAL.match(parts[-1])
    if serial and "recorder" not in labels:
        labels["recorder"] = serial.group(1)
    return labels


def read_labels_csv(path: Path | str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """A labels table keyed by relative path: returns (label columns, rows by path).

    The CSV needs a ``path`` column (relative to the recordings folder); every
    other column is a label, kept as text. It must be UTF-8. A path listed
    twice is warned about (the last row wins).
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise ValueError(f"{path}: a labels CSV needs a 'path' column; found {reader.fieldnames}")
            columns = [c for c in reader.fieldnames if c != "path"]
            _check_label_names(path, reader.fieldnames)
            rows: dict[str, dict[str, str]] = {}
            duplicates: list[str] = []
            for r in reader:
                key = Path(r["path"] or "").as_posix()
                if key in rows:
                    duplicates.append(key)
                rows[key] = {c: (r[c] or "") for c in columns}
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at position {e.start}); "
            "save it as UTF-8 (in Excel: 'CSV UTF-8'; or iconv -f latin1 -t utf-8)"
        ) from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read the labels CSV ({e.strerror})") from None
    if duplicates:
        log.warning(
            "%s: %d paths are listed more than once (the last row is used), e.g. %s",
            path,
            len(duplicates),
            ", ".join(sorted(set(duplicates))[:3]),
        )
    return columns, rows


def _check_label_names(path: Path, names: list[str]) -> None:
    """A repeated or empty column name would give the output two fields of one name (or none): refuse it now."""
    from collections import Counter

    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    if repeated:
        raise ValueError(f"{path}: the column {repeated[0]!r} appears more than once; each label needs its own name")
    if any(not n.strip() for n in names):
        raise ValueError(f"{path}: a column has no name (column {[n.strip() for n in names].index('') + 1}); name it")


def label_columns(labels_csv: Path | str | None) -> list[str]:
    """The label columns a survey's outputs carry (fixed before any file is read)."""
    if labels_csv is None:
        return ["site", "recorder"]
    return read_labels_csv(labels_csv)[0]


def discover(
    root: Path | str, labels_csv: Path | str | None = None, skipped: dict[str, str] | None = None
) -> tuple[list[Path], list[str], dict[str, dict[str, str]]]:
    """Files under ``root``, the label columns, and labels by relative path.

    Labels come from ``labels_csv`` when given; else from ``root/labels.csv``
    if present; else from the folder layout. Paths the CSV lists that are not
    found, and files it does not list, are warned about with counts and
    examples. What could not be searched goes into ``skipped`` (see
    :func:`find_audio_files`).
    """
    root = Path(root)
    if labels_csv is None and (root / "labels.csv").is_file():
        labels_csv = root / "labels.csv"
    files = find_audio_files(root, skipped)
    base = root if root.is_dir() else root.parent
    rels = [p.relative_to(base).as_posix() for p in files]
    if labels_csv is not None:
        columns, by_path = read_labels_csv(labels_csv)
        _warn_unmatched(labels_csv, set(by_path), set(rels), root)
    else:
        columns = ["site", "recorder"]
        by_path = {rel: labels_from_layout(rel) for rel in rels}
    return files, columns, by_path


def _warn_unmatched(labels_csv: Path | str, listed: set[str], found: set[str], root: Path) -> None:
    missing, unlabelled = sorted(listed - found), sorted(found - listed)
    if missing and root.is_dir():
        log.warning(
            "%s: %d of %d listed paths are not audio files under %s, e.g. %s",
            labels_csv,
            len(missing),
            len(listed),
            root,
            ", ".join(missing[:3]),
        )
    if unlabelled and root.is_dir():
        log.warning(
            "%d of %d files under %s have no row in %s (their labels are empty), e.g. %s",
            len(unlabelled),
            len(found),
            root,
            labels_csv,
            ", ".join(unlabelled[:3]),
        )


def open_recording(path: Path, root: Path, labels: dict[str, str] | None = None) -> Recording:
    """Read a file's header and check it is usable audio; raise BadAudio if not."""
    root = root if root.is_dir() else root.parent
    try:
        size = path.stat().st_size
    except OSError as e:
        raise BadAudio(path, f"cannot stat file ({e.strerror})") from None
    if size == 0:
        raise BadAudio(path, "empty file (0 bytes)")
    try:  # libsndfile says only "System error." when it cannot open a file: ask the OS why
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise BadAudio(path, f"cannot open file ({e.strerror})") from None
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile reports corrupt and non-audio files this way
        raise BadAudio(path, f"not readable as audio ({_short(e)})") from None
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise BadAudio(path, f"implausible sample rate {info.samplerate} Hz (corrupt header?)")
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise BadAudio(path, f"implausible channel count {info.channels} (corrupt header?)")
    if info.frames <= 0:
        raise BadAudio(path, "no audio samples")
    rel = path.relative_to(root).as_posix()
    return Recording(
        truncated=_truncation(info.extra_info),
        path=path,
        relpath=rel,
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        n_samples=int(info.frames),
        start_time=parse_start_time(path.name),
        labels=dict(labels or {}),
        utc_offset_min=clock_offset(path),
    )


_AUDIOMOTH_CLOCK = re.compile(
    r"Recorded at \d{2}:\d{2}:\d{2} \d{2}/\d{2}/\d{4} \(UTC(?:([+-])(\d{1,2})(?::?(\d{2}))?)?\)"
)


def clock_offset(path: Path) -> int | None:
    """Minutes the recorder's clock is ahead of UTC, from an AudioMoth's comment ("Recorded at 06:00:00
    22/05/2019 (UTC+2) by AudioMoth ..."): its file name's time is then known as an instant. None elsewhere."""
    try:
        with sf.SoundFile(str(path)) as f:
            comment = f.comment or ""
    except Exception:  # metadata is a bonus: a file that reads as audio but not its comment has none
        return None
    match = _AUDIOMOTH_CLOCK.search(comment)
    if not match:
        return None
    sign, hours, minutes = match.groups()
    if sign is None:
        return 0
    return (1 if sign == "+" else -1) * (int(hours) * 60 + int(minutes or 0))


RESAMPLER = {"library": "soxr", "quality": "HQ", "mode": "streaming"}  # recorded in run.json


def iter_blocks(
    rec: Recording, target_rate: int = 48_000, block_seconds: float = READ_BLOCK_SECONDS
) -> Iterator[np.ndarray]:
    """Mono float32 audio at ``target_rate``, in blocks of about ``block_seconds``.

    Reads the file block by block (never whole), averages the channels, and
    resamples with a streaming soxr resampler so block edges leave no seams.
    Raises BadAudio on a read error or non-finite samples.
    """
    block = max(1024, int(block_seconds * rec.sample_rate))
    resampler = (
        None
        if rec.sample_rate == target_rate
        else soxr.ResampleStream(rec.sample_rate, target_rate, 1, dtype="float32", quality=RESAMPLER["quality"])
    )
    position = 0
    try:
        f = sf.SoundFile(str(rec.path))
    except Exception as e:
        raise BadAudio(rec.path, f"not readable as audio ({_short(e)})") from None
    with f:
        while True:
            try:
                data = f.read(block, dtype="float32", always_2d=True)
            except Exception as e:
                raise BadAudio(rec.path, f"read error after {position / rec.sample_rate:.1f} s ({_short(e)})") from None
            last = len(data) < block
            if len(data):
                if not np.isfinite(data).all():
                    bad = position + int(np.argmax(~np.isfinite(data).all(axis=1)))
                    raise BadAudio(rec.path, f"non-finite samples (NaN or inf) at {bad / rec.sample_rate:.3f} s")
                mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
                position += len(data)
            else:
                mono = np.zeros(0, dtype=np.float32)
            if resampler is not None:
                mono = resampler.resample_chunk(np.ascontiguousarray(mono), last=last)
            if len(mono):
                yield np.ascontiguousarray(mono, dtype=np.float32)
            if last:
                break


def read_audio(rec: Recording, target_rate: int = 48_000) -> np.ndarray:
    """The whole recording as mono float32 at ``target_rate`` (for short files and tests)."""
    blocks = list(iter_blocks(rec, target_rate))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


def read_excerpt(rec: Recording, start_s: float, seconds: float, *, rate: int) -> np.ndarray:
    """``seconds`` of mono float32 audio at ``rate`` from ``start_s`` (clamped to the file): to listen to a frame."""
    start = min(max(0, int(round(start_s * rec.sample_rate))), rec.n_samples)
    n = max(0, min(int(round(seconds * rec.sample_rate)), rec.n_samples - start))
    try:
        with sf.SoundFile(str(rec.path)) as f:
            f.seek(start)
            data = f.read(n, dtype="float32", always_2d=True)
    except Exception as e:
        raise BadAudio(rec.path, f"read error at {start_s:.1f} s ({_short(e)})") from None
    mono = np.ascontiguousarray(data.mean(axis=1), dtype=np.float32)
    return mono if rec.sample_rate == rate else soxr.resample(mono, rec.sample_rate, rate).astype(np.float32)


# libsndfile's log of a WAV whose data chunk is shorter than its header says.
_DATA_SHORT = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _truncation(extra_info: str) -> str | None:
    match = _DATA_SHORT.search(extra_info or "")
    if match and int(match.group(2)) < int(match.group(1)):
        declared, present = int(match.group(1)), int(match.group(2))
        return f"data chunk cut short: header says {declared} bytes, file holds {present}"
    return None


def _short(e: Exception) -> str:
    text = str(e).strip().replace("\n", " ")
    return text[:200] or type(e).__name__
