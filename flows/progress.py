"""Live progress for a run in the terminal: documents, documents per second and ETA per stage."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Documents per second, from the documents each finished task reports."""

    def render(self, task: Task) -> Text:
        docs = task.fields.get("docs", 0)
        elapsed = task.elapsed or 0.0
        rate = docs / elapsed if elapsed > 0 else 0.0
        return Text(f"{docs:,} docs  {rate:,.0f} docs/s", style="progress.data.speed")


class AmountColumn(ProgressColumn):
    """Done/total, in MB for stages measured in bytes."""

    def render(self, task: Task) -> Text:
        if task.fields.get("unit") == "bytes":
            return Text(f"{task.completed / 1e6:,.1f}/{(task.total or 0) / 1e6:,.1f} MB", style="progress.download")
        return Text(f"{int(task.completed):,}/{int(task.total or 0):,}", style="progress.download")


class RunProgress:
    """A no-op when disabled, so the flow can report unconditionally."""

    def __init__(self, enabled: bool, console: Console | None = None):
        self.progress = Progress(
            TextColumn("[bold]{task.description:<8}"), BarColumn(), AmountColumn(), RateColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
        ) if enabled else None

    def __enter__(self) -> RunProgress:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()

    def note(self, message: str) -> None:
        if self.progress:
            self.progress.console.print(message)

    def stage(self, name: str, total: int, unit: str = "docs") -> int | None:
        return self.progress.add_task(name, total=total, docs=0, unit=unit) if self.progress else None

    def advance(self, stage: int | None, amount: int, docs: int) -> None:
        if self.progress is not None and stage is not None:
            task = self.progress.tasks[stage]
            self.progress.update(stage, advance=amount, docs=task.fields.get("docs", 0) + docs)
