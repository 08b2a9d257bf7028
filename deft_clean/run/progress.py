"""Rich progress bars for long loops; silent with ``quiet`` or when stderr is not a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RichProgress:
    """Renders epoch and scoring progress (samples/s, loss, clean fraction) on stderr."""

    def __init__(self, *, quiet: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = not quiet and self.console.is_terminal
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> RichProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[metrics]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def _start(self, description: str, total: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(description, total=total, rate="", metrics="")

    def start_task(self, description: str, total: int) -> None:
        self._start(description, total)

    def start_epoch(self, epoch: int, epochs: int, total: int) -> None:
        self._start(f"epoch {epoch}/{epochs}", total)

    def start_scoring(self, total: int) -> None:
        self._start("scoring", total)

    def advance(self, n: int, **metrics: float) -> None:
        if self._progress is None or self._task is None:
            return
        self._progress.advance(self._task, n)
        task = self._progress.tasks[-1]
        rate = f"{task.speed:,.0f} img/s" if task.speed else ""
        if metrics:  # loops report metrics every few steps only; keep the last ones shown in between
            text = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            self._progress.update(self._task, rate=rate, metrics=text)
        else:
            self._progress.update(self._task, rate=rate)
