"""Long jobs off the UI thread, with progress, cancel and errors shown as notifications.

A job is a plain function `job(report, cancel) -> result` that runs in a Qt thread pool thread.
`report(done, total, payload=None)` sends progress (and optional data, e.g. one finished plane)
to the main thread through a queued Qt signal; `cancel` is a `threading.Event` the job checks
between steps. Core functions take exactly these callbacks, so the UI adds no logic of its own.
Workers come from superqt directly (not napari's `create_worker`), so an exception becomes one
short error notification instead of a traceback dialog.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal
from superqt.utils import FunctionWorker, create_worker

log = logging.getLogger(__name__)

Report = Callable[..., None]
Job = Callable[[Report, threading.Event], Any]


class _Relay(QObject):
    """Carries progress from the worker thread to the main thread (queued connection)."""

    progressed = Signal(int, int, object)


class JobHandle:
    """A running job: the superqt worker, its cancel flag and where its results go."""

    def __init__(
        self,
        job: Job,
        *,
        name: str,
        on_progress: Callable[[int, int, Any], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_finished: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.cancel_event = threading.Event()
        self.relay = _Relay()
        if on_progress is not None:
            self.relay.progressed.connect(on_progress)
        self.thread_ids: list[int] = []
        self._finished = False

        def report(done: int, total: int, payload: Any = None) -> None:
            self.relay.progressed.emit(int(done), int(total), payload)

        def body() -> Any:
            self.thread_ids.append(threading.get_ident())
            return job(report, self.cancel_event)

        self.worker: FunctionWorker = create_worker(body, _start_thread=False, _ignore_errors=True)
        if on_done is not None:
            self.worker.returned.connect(on_done)
        self.worker.errored.connect(lambda exc: self._errored(exc, on_error))
        self.worker.finished.connect(lambda: setattr(self, "_finished", True))
        if on_finished is not None:
            self.worker.finished.connect(on_finished)

    def _errored(self, exc: BaseException, on_error: Callable[[str], None] | None) -> None:
        if not isinstance(exc, (ValueError, RuntimeError, FileNotFoundError, OSError, TypeError)):
            log.error("%s failed", self.name, exc_info=exc)
        message = f"{self.name} failed: {exc}"
        if on_error is not None:
            on_error(message)
        else:
            from napari.utils.notifications import show_error

            show_error(message)

    def start(self) -> JobHandle:
        self.worker.start()
        return self

    def cancel(self) -> None:
        """Ask the job to stop at its next check (the current step finishes first)."""
        self.cancel_event.set()

    @property
    def running(self) -> bool:
        """True until the worker has finished (returned, failed or was cancelled)."""
        return not self._finished


def start_job(job: Job, **kwargs: Any) -> JobHandle:
    """Create and start a job (see `JobHandle` for the callbacks)."""
    return JobHandle(job, **kwargs).start()
