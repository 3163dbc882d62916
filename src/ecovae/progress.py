"""Progress bars for long work (files, clips, ETA), quiet when not wanted."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def file_progress(total: int, description: str, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yields ``advance(files=1, **fields)``: a files bar with elapsed time, ETA and extra fields."""
    if not enabled:
        yield lambda files=1, **fields: None
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
        TextColumn("files"),
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
