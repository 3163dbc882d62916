"""What a user sees of long work: progress bars (files, clips, ETA), quiet when not wanted, and the log."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class LineProgress:
    """Progress for a log (no terminal): a line when another ``step`` of the work is done *and* ``seconds`` have
    passed since the last line, and one at the end; a bar's redraws would fill the log."""

    def __init__(
        self,
        total: int,
        description: str,
        unit: str = "files",
        stream=None,
        step: float = 0.1,
        seconds: float = 60,
        start: int = 0,
    ):
        self.total, self.description, self.unit = total, description, unit
        self.stream = stream or sys.stderr
        self.step, self.seconds = step, seconds
        self.t0 = self.last_time = time.monotonic()
        self.done = self.last_done = start  # a resumed job counts from where it was
        self.fields: dict = {}

    def update(self, done: int, **fields) -> None:
        self.done, self.fields = done, {**self.fields, **fields}
        now = time.monotonic()
        enough = self.total and (self.done - self.last_done) >= self.step * self.total
        if enough and now - self.last_time >= self.seconds:
            self._line(now)

    def close(self) -> None:
        if self.done != self.last_done or self.done == 0:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        self.last_time, self.last_done = now, self.done
        elapsed = now - self.t0
        share = self.done / self.total if self.total else 1.0
        eta = elapsed / share - elapsed if 0 < share < 1 else 0.0
        extra = "".join(f", {k} {v}" for k, v in self.fields.items())
        print(
            f"{self.description}: {self.done}/{self.total} {self.unit} ({share:.0%}){extra}; "
            f"{_clock(elapsed)} elapsed" + (f", ETA {_clock(eta)}" if 0 < share < 1 else ""),
            file=self.stream,
            flush=True,
        )


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def interactive(stream=None) -> bool:
    """Whether progress can be drawn as a bar (a terminal), not written as lines (a log file, a pipe)."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def file_progress(
    total: int, description: str, enabled: bool = True, *, unit: str = "files"
) -> Iterator[Callable[..., None]]:
    """Yields ``advance(files=1, **fields)``: a files bar with elapsed time, ETA and extra fields (in a log:
    :class:`LineProgress` lines)."""
    if not enabled:
        yield lambda files=1, **fields: None
        return
    if not interactive():
        lines = LineProgress(total, description, unit=unit)
        count = [0]

        def log_advance(files: int = 1, **fields) -> None:
            count[0] += files
            lines.update(count[0], **fields)

        try:
            yield log_advance
        finally:
            lines.close()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(files: int = 1, **fields) -> None:
            status = "  ".join(f"{k} {v}" for k, v in fields.items())
            bar.update(task, advance=files, **({"status": status} if fields else {}))

        yield advance


def setup_logging(verbose: bool = False) -> None:
    """Messages to stderr as ``LEVEL module: message`` (debug ones too with ``verbose``); Lightning's quieted."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    quiet_lightning()


def quiet_lightning() -> None:
    """Lightning's start-up chatter and deprecation notes say nothing a user can act on."""
    import warnings

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # a resumed run's checkpoint folder is not empty by design; a small survey has fewer batches than log lines
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*resuming from a checkpoint that ended before the epoch ended.*")
