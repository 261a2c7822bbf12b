"""The engine-agnostic batch pipeline: tasks → engine (workers) → results → one chunked writer.

An *engine* turns an iterable of `Task`s into an iterator of `TaskResult`s, each task's
result exactly once, in any order, with per-task failures as results (`error` set). The
pipeline de-duplicates (an engine that retries may see a result twice), groups results into
chunks and hands each chunk to a single `write` callback, so a killed job keeps every chunk
already written and a re-run can skip them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .records import Task, TaskResult
from .worker import Segmenter, SegmentSettings

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int | None], None]
WriteCallback = Callable[[list[TaskResult]], None]


class Engine(Protocol):
    """What the pipeline needs from an execution engine."""

    def map(self, tasks: Iterable[Task], settings: SegmentSettings) -> Iterator[TaskResult]: ...

    def model_info(self) -> dict[str, Any]: ...


class LocalEngine:
    """In-process engine (the default): one model, tasks one after another."""

    def __init__(self) -> None:
        self._segmenter: Segmenter | None = None
        self._settings: SegmentSettings | None = None

    def _get(self, settings: SegmentSettings) -> Segmenter:
        if self._segmenter is None or self._settings != settings:
            self._segmenter = Segmenter(settings)
            self._settings = settings
        return self._segmenter

    def map(self, tasks: Iterable[Task], settings: SegmentSettings) -> Iterator[TaskResult]:
        segmenter = self._get(settings)
        for task in tasks:
            yield segmenter.run(task)

    def model_info(self) -> dict[str, Any]:
        if self._segmenter is None:
            raise RuntimeError("no model loaded yet")
        return self._segmenter.info()


def make_engine(engine: str | Engine = "local", **options: Any) -> Engine:
    """An engine by name (`"local"`, `"ray"`) or an engine object passed through."""
    if not isinstance(engine, str):
        return engine
    if engine == "local":
        if options:
            raise ValueError(f"the local engine takes no options (got {sorted(options)})")
        return LocalEngine()
    if engine == "ray":
        from .ray_engine import RayEngine

        return RayEngine(**options)
    raise ValueError(f"unknown engine {engine!r}; use 'local' or 'ray'")


@dataclass
class BatchSummary:
    """What a batch job did: counts, per-task failures and the model that ran."""

    total: int | None = None
    processed: int = 0
    succeeded: int = 0
    instances: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0
    chunks_written: int = 0
    seconds: float = 0.0
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "processed": self.processed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "instances": self.instances,
            "failures": dict(self.failures),
            "chunks_written": self.chunks_written,
            "seconds": round(self.seconds, 3),
            "model": dict(self.model),
        }


def tqdm_progress(total: int | None, desc: str = "segmenting") -> ProgressCallback:
    """A progress callback drawing a tqdm bar."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="image")

    def update(done: int, _total: int | None) -> None:
        bar.update(done - bar.n)
        if _total is not None and done >= _total:
            bar.close()

    return update


def run_batch(
    tasks: Iterable[Task],
    settings: SegmentSettings,
    write: WriteCallback,
    *,
    engine: str | Engine = "local",
    engine_options: dict[str, Any] | None = None,
    chunk_size: int = 32,
    total: int | None = None,
    progress: ProgressCallback | bool | None = None,
) -> BatchSummary:
    """Run a batch job and return its summary.

    Results reach `write` in chunks of `chunk_size` (the last one may be shorter), each task
    exactly once. `progress` is a callback `(done, total)`, True for a tqdm bar, or None.
    Failed tasks are counted in the summary and passed to `write` too (so a writer can clear
    stale labels); they are also logged.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if total is None and hasattr(tasks, "__len__"):
        total = len(tasks)  # type: ignore[arg-type]
    if progress is True:
        progress = tqdm_progress(total)
    engine_obj = make_engine(engine, **(engine_options or {}))
    summary = BatchSummary(total=total)
    seen: set[str] = set()
    chunk: list[TaskResult] = []
    start = time.perf_counter()

    def flush() -> None:
        if chunk:
            write(list(chunk))
            summary.chunks_written += 1
            chunk.clear()

    for result in engine_obj.map(tasks, settings):
        if result.key in seen:
            summary.duplicates += 1
            continue
        seen.add(result.key)
        summary.processed += 1
        if result.ok:
            summary.succeeded += 1
            summary.instances += len(result.instances)
        else:
            summary.failures[result.key] = result.error or "unknown error"
            logger.warning("segmentation failed for %s (%s): %s", result.key, result.path, result.error)
        chunk.append(result)
        if len(chunk) >= chunk_size:
            flush()
        if progress:
            progress(summary.processed, total)
    flush()
    if summary.processed:
        summary.model = engine_obj.model_info()
    summary.seconds = time.perf_counter() - start
    return summary
