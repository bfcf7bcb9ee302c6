"""The worker pool: threads that take queued requests from the store and run ``dub``.

Each worker claims the oldest pending request, dubs it with the progress callback writing
the phase and an overall percentage to the store, and records the output or the error.
``dub`` writes its output atomically, so a finished file is always whole.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InternalError, LipsyncError
from .store import Request, Store

logger = logging.getLogger(__name__)

# The pipeline's progress phases, the API's names for them, and each one's share of the
# whole job (export also renders the new mouth, phases 3 and 4 run interleaved).
PHASES = {
    "scenes": ("scene_detection", 0.0, 10.0),
    "faces": ("face_detection", 10.0, 40.0),
    "export": ("visual_dubbing", 40.0, 100.0),
}
# Progress is written at most this often (seconds) within a phase: one row per batch is
# plenty for a client polling every few seconds.
_WRITE_EVERY = 0.5


@dataclass(frozen=True)
class JobSettings:
    """How the workers run ``dub``."""

    max_duration: float | None = 3600.0  # seconds; longer inputs fail with ERR_009
    face_workers: int | None = None  # face-analysis processes per job; None = one per core
    poll_interval: float = 1.0  # seconds an idle worker waits before looking again


class WorkerPool:
    """``count`` threads running queued jobs until :meth:`stop`.

    ``on_done`` is called with the request id after each job has been recorded as finished
    or failed (the webhook sender); it must return quickly, and what it raises is logged.
    """

    def __init__(
        self,
        store: Store,
        count: int = 1,
        settings: JobSettings | None = None,
        on_done: Callable[[str], None] | None = None,
    ) -> None:
        if count < 1:
            raise ValueError(f"need at least one worker, got {count}")
        self.store = store
        self.count = count
        self.settings = settings or JobSettings()
        self.on_done = on_done
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Requeue what a previous server left running, then start the workers."""
        self.store.requeue_running()
        for index in range(self.count):
            thread = threading.Thread(target=self._loop, name=f"lipsync-job-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def notify(self) -> None:
        """Tell an idle worker that a request has been queued."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking jobs and wait for the running ones to end."""
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            request = self.store.claim_next()
            if request is None:
                self._wake.wait(self.settings.poll_interval)
                self._wake.clear()
                continue
            run_job(self.store, request, self.settings)
            self._done(request.request_id)

    def _done(self, request_id: str) -> None:
        if self.on_done is None:
            return
        try:
            self.on_done(request_id)
        except Exception:  # the worker keeps going whatever a notification does
            logger.exception("request %s: the completion callback failed", request_id)


def run_job(store: Store, request: Request, settings: JobSettings) -> None:
    """Dub one claimed request and record its output or its error; never raises."""
    from ..pipeline import dub

    output = store.output_dir / f"{request.request_id}.mp4"
    logger.info("request %s: dubbing with %s", request.request_id, request.model)
    try:
        dub(
            store.asset_path(request.video_asset),
            store.asset_path(request.audio_asset),
            intensity=request.intensity,
            model=request.model,
            output=output,
            progress=_Progress(store, request.request_id),
            max_duration=settings.max_duration,
            workers=settings.face_workers,
        )
    except LipsyncError as exc:
        logger.info("request %s failed: %s %s", request.request_id, exc.code, exc)
        store.fail(request.request_id, exc.code, exc.name, str(exc))
        return
    except Exception as exc:  # a worker thread must survive whatever one job does
        logger.exception("request %s: unexpected failure", request.request_id)
        error = InternalError(f"unexpected failure: {type(exc).__name__}")
        store.fail(request.request_id, error.code, error.name, str(error))
        return

    store.finish(request.request_id, output)
    logger.info("request %s done: %s", request.request_id, output)


class _Progress:
    """The ``dub`` progress callback: phase and overall percentage into the store."""

    def __init__(self, store: Store, request_id: str) -> None:
        self.store = store
        self.request_id = request_id
        self.phase: str | None = None
        self.written = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        name, start, end = PHASES.get(phase, (phase, 0.0, 100.0))
        fraction = done / total if total > 0 else 1.0
        percent = start + (end - start) * min(max(fraction, 0.0), 1.0)

        tick = time.monotonic()
        if phase == self.phase and tick - self.written < _WRITE_EVERY and fraction < 1.0:
            return
        self.phase, self.written = phase, tick
        self.store.set_progress(self.request_id, name, percent)
