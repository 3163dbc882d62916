"""The survey: every recording under a folder with its labels, read one by one, and what could not be read.

One reader for every stage that reads audio (training, encoding, the
baselines, the hardware check, interpretation), so that all of them find the
same files (linked folders followed once, :func:`ecovae.audio.find_audio_files`),
give them the same labels, and treat a broken file the same way: a corrupt,
empty, truncated-to-nothing or too-short file is logged, kept in ``skipped``
with its reason, and passed over; never replaced by another, never fatal to
the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from ecovae.audio import AUDIO_EXTENSIONS, BadAudio, Recording, discover, open_recording
from ecovae.spectrogram import Clip, SpectrogramConfig, iter_clips

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Survey:
    """The recordings of a survey (paths relative to ``root``), their labels, and the run's spectrogram settings.

    >>> from pathlib import Path
    >>> survey = Survey(root=Path("."), files=["a.wav", "b.wav"], label_columns=["site"], labels={"a.wav": {"site": "x"}})
    >>> survey.subset(["b.wav", "c.wav"]).files, survey.subset(["c.wav"]).skipped
    (['b.wav'], {'c.wav': 'not found under the recordings folder'})
    """

    root: Path  # the folder the relative paths start from
    files: list[str]
    label_columns: list[str]
    labels: dict[str, dict[str, str]]  # relative path -> label values
    spec: SpectrogramConfig = field(default_factory=SpectrogramConfig)
    skipped: dict[str, str] = field(default_factory=dict)  # relative path -> why it was not read
    label_source: str = "the folder layout"  # where the labels came from: a CSV, or the folder layout

    def with_spec(self, spec: SpectrogramConfig) -> Survey:
        """The same survey read with a model's spectrogram settings (nothing opened again; ``skipped`` shared)."""
        return replace(self, spec=spec)

    def subset(self, rels: Iterable[str]) -> Survey:
        """Only these recordings (relative paths, in this order), such as those a latents table holds; one the
        survey does not have is skipped as not found."""
        have = set(self.files)
        wanted = list(dict.fromkeys(rels))
        skipped = {rel: why for rel, why in self.skipped.items() if rel in set(wanted)}
        skipped |= {rel: "not found under the recordings folder" for rel in wanted if rel not in have}
        return replace(self, files=[rel for rel in wanted if rel in have], skipped=skipped)

    def open(self, rel: str) -> Recording:
        """One recording's header, checked (:class:`BadAudio` if unusable), with its labels."""
        return open_recording(self.root / rel, self.root, self.labels.get(rel, {}))

    def clips(self, rec: Recording) -> list[Clip]:
        """A recording's clips of whole frames (:class:`BadAudio` if it is shorter than one frame)."""
        return recording_clips(rec, self.spec)

    def read(
        self,
        read: Callable[[Recording], T],
        rels: Iterable[str] | None = None,
        workers: int = 1,
        progress: str | None = None,
    ) -> Iterator[tuple[Recording, T]]:
        """``(recording, read(recording))`` for every readable file (or those of ``rels``), in order.

        A file that cannot be opened or read is logged and put in ``skipped``
        with the reason. ``workers`` > 1 reads in that many spawned processes
        (``read`` must then be picklable: a module-level function or a
        ``functools.partial`` of one).
        """
        from ecovae.progress import file_progress

        rels = self.files if rels is None else list(rels)
        jobs = [(self.root, rel, self.labels.get(rel, {}), read) for rel in rels]
        with file_progress(len(jobs), progress or "", enabled=progress is not None) as advance:
            for rel, outcome in _map(jobs, workers):
                advance()
                if isinstance(outcome, str):
                    log.warning("skipped %s: %s", rel, outcome)
                    self.skipped[rel] = outcome
                else:
                    yield outcome

    def recordings(self, rels: Iterable[str] | None = None, progress: str | None = None):
        """``(recording, clips)`` for every readable recording (see :meth:`read`)."""
        from functools import partial

        return self.read(partial(recording_clips, spec=self.spec), rels, progress=progress)


def open_survey(
    root: Path | str,
    labels_csv: Path | str | None = None,
    spec: SpectrogramConfig | None = None,
    *,
    rels: Iterable[str] | None = None,
) -> Survey:
    """The survey under ``root`` (a folder, or one audio file), labelled from ``labels_csv``, ``root/labels.csv``
    or the folder layout (:func:`ecovae.audio.discover`). ``rels``: only these files (relative paths), for
    example those a latents table holds. A folder without audio files is an error that says so.

    >>> import tempfile, pathlib
    >>> from ecovae import simulate_survey
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "survey"
    >>> labels = simulate_survey(folder, n_sites=2, recorders_per_site=1, hours=(6.0,), duration_s=6.0)
    >>> from ecovae import open_survey
    >>> survey = open_survey(folder)
    >>> len(survey.files), survey.labels[survey.files[0]]["site"], survey.skipped
    (2, 'site1', {})
    """
    root = Path(root)
    not_searched: dict[str, str] = {}
    files, columns, labels = discover(root, labels_csv, not_searched)
    base = root if root.is_dir() else root.parent
    found = [p.relative_to(base).as_posix() for p in files]
    if rels is not None:
        wanted = list(dict.fromkeys(rels))
        missing = set(wanted) - set(found)
        not_searched.update({rel: "not found under the recordings folder" for rel in sorted(missing)})
        found = [rel for rel in wanted if rel not in missing]
    if not found and rels is None:
        raise FileNotFoundError(f"{root}: no audio files (looked for {', '.join(AUDIO_EXTENSIONS)})")
    source = labels_csv or (root / "labels.csv" if (root / "labels.csv").is_file() else None)
    return Survey(
        root=base,
        files=found,
        label_columns=columns,
        labels=labels,
        spec=spec or SpectrogramConfig(),
        skipped=not_searched,
        label_source=str(source) if source else "the folder layout",
    )


def as_survey(
    recordings: Survey | Path | str,
    labels_csv: Path | str | None = None,
    spec: SpectrogramConfig | None = None,
    *,
    rels: Iterable[str] | None = None,
) -> Survey:
    """``recordings`` as a :class:`Survey`: one already open is used as it is (with ``spec`` and ``rels``
    applied; nothing is searched or read again), a folder is opened (:func:`open_survey`).

    Every stage takes either, so that a pipeline opens its survey once and a notebook can pass a folder.
    """
    if not isinstance(recordings, Survey):
        return open_survey(recordings, labels_csv, spec, rels=rels)
    if labels_csv is not None:
        raise ValueError("a survey already open has its labels: give labels_csv to open_survey instead")
    survey = recordings if spec is None or spec == recordings.spec else recordings.with_spec(spec)
    return survey if rels is None else survey.subset(rels)


def recording_clips(rec: Recording, spec: SpectrogramConfig, max_clips: int | None = None) -> list[Clip]:
    """The recording's clips (all, or the first ``max_clips``); :class:`BadAudio` if not one whole frame."""
    clips = []
    for clip in iter_clips(rec, spec):
        clips.append(clip)
        if max_clips is not None and len(clips) >= max_clips:
            break
    if not clips:
        raise BadAudio(rec.path, f"shorter than one frame ({spec.frame_seconds:.3f} s)")
    return clips


def _read_one(job: tuple) -> tuple[str, tuple | str]:
    root, rel, labels, read = job
    try:
        rec = open_recording(root / rel, root, labels)
        return rel, (rec, read(rec))
    except BadAudio as e:
        return rel, e.reason
    except Exception as e:  # one odd file in a million must not stop the survey
        log.exception("unexpected error reading %s", root / rel)
        return rel, f"unexpected error: {type(e).__name__}: {e}"


def _map(jobs: list[tuple], workers: int) -> Iterator[tuple[str, tuple | str]]:
    workers = min(workers, len(jobs), os.cpu_count() or 1)
    if workers < 2:
        yield from map(_read_one, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the parent holds torch's and BLAS's threads, which a forked child must not inherit
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_read_one, jobs, chunksize=4)
