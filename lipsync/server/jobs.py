"""Job workers: processes that claim jobs from a :class:`~lipsync.server.queues.JobQueue` and
run ``dub``.

:func:`worker_loop` is the whole of a worker and runs in any process; :class:`WorkerProcesses`
keeps ``count`` of them alive beside the API server (spawned, never forked: mediapipe's graphs
and the decoder's threads do not survive a fork). Each worker claims the oldest waiting job,
renews its lease from a heartbeat thread, dubs with the progress callback writing the phase
and an overall percentage, and records the output or the error. ``dub`` writes its output
atomically and each attempt writes its own file, so a recorded output is always whole.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess

from ..errors import InternalError, LipsyncError
from .queues import Claim, JobQueue, WorkerId, open_queue

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
    face_workers: int | None = None  # face processes per job; None = cores / job workers
    poll_interval: float = 1.0  # seconds an idle worker waits before looking again
    lease: float = 60.0  # seconds a claim holds without renewal (renewed every third of it)
    max_attempts: int = 3  # claims of one job before a worker that keeps dying fails it
    stop_grace: float = 10.0  # seconds a stopping server lets running jobs end, then ends them
    check_interval: float = 2.0  # seconds between looks for dead workers and abandoned jobs


def worker_loop(
    queue: JobQueue,
    settings: JobSettings,
    *,
    should_stop: Callable[[], bool],
    wait: Callable[[float], object] = time.sleep,
) -> int:
    """Claim and run jobs until ``should_stop()`` (checked between jobs); how many ran.

    ``wait(seconds)`` is called when no job waits (it may return early when woken).
    """
    worker = WorkerId.current()
    ran = 0
    while not should_stop():
        try:
            claim = queue.claim(worker, settings.lease)
        except Exception:  # a busy or briefly unreachable queue: try again later
            logger.exception("worker %s: claiming a job failed", worker)
            claim = None
        if claim is None:
            wait(settings.poll_interval)
            continue

        with _Heartbeat(queue, claim, settings.lease):
            run_job(queue, claim, settings)
        ran += 1
    return ran


def run_job(queue: JobQueue, claim: Claim, settings: JobSettings) -> None:
    """Dub one claimed job and record its output or its error; never raises."""
    from ..pipeline import dub

    output = queue.output_path(claim)
    logger.info(
        "request %s: dubbing with %s (attempt %d)", claim.request_id, claim.model, claim.attempt
    )
    try:
        video, audio = queue.inputs(claim)
        dub(
            video,
            audio,
            intensity=claim.intensity,
            model=claim.model,
            output=output,
            progress=_Progress(queue, claim),
            max_duration=settings.max_duration,
            workers=settings.face_workers,
        )
    except LipsyncError as exc:
        logger.info("request %s failed: %s %s", claim.request_id, exc.code, exc)
        error = exc
    except Exception as exc:  # a worker must survive whatever one job does
        logger.exception("request %s: unexpected failure", claim.request_id)
        error = InternalError(f"unexpected failure: {type(exc).__name__}")
    else:
        if queue.finish(claim, output):
            logger.info("request %s done: %s", claim.request_id, output)
        else:
            # The claim was taken back (this worker was thought gone): another run owns it.
            output.unlink(missing_ok=True)
            logger.warning("request %s: claim lost; this run's output dropped", claim.request_id)
        return

    if not queue.fail(claim, error):
        logger.warning("request %s: claim lost; this run's failure dropped", claim.request_id)


class WorkerProcesses:
    """``count`` worker processes beside the API server, restarted if one dies, until :meth:`stop`.

    With ``count`` 0 (workers on other machines) only the monitor runs: it still takes back
    the claims of workers that are gone.

    Each worker runs in a process group of its own, with the face-analysis processes it
    starts: a Ctrl-C at the server's terminal reaches the server only, and :meth:`stop` ends
    each group as a whole. A worker whose server has gone (killed) finishes the job it holds
    and exits; the next server leaves that job to it, since its owner is still alive.
    """

    def __init__(
        self, queue: JobQueue, count: int = 1, settings: JobSettings | None = None
    ) -> None:
        if count < 0:
            raise ValueError(f"the worker count cannot be negative, got {count}")
        settings = settings or JobSettings()
        if settings.face_workers is None:
            # Share the cores between the jobs rather than start cores x jobs processes.
            shares = max(count, 1)
            settings = replace(settings, face_workers=max(1, (os.cpu_count() or 1) // shares))
        self.queue = queue
        self.count = count
        self.settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._wake = self._context.Event()
        self._stop = self._context.Event()
        self._processes: list[BaseProcess] = []
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    def start(self) -> None:
        """Take back jobs whose workers are gone, then start the workers and their monitor."""
        self.queue.requeue_abandoned(self.settings.max_attempts)
        self._processes = [self._spawn(index) for index in range(self.count)]
        self._monitor = threading.Thread(target=self._watch, name="lipsync-jobs", daemon=True)
        self._monitor.start()

    def notify(self) -> None:
        """Tell an idle worker that a job has been queued."""
        self._wake.set()

    def pids(self) -> list[int]:
        """Process ids of the workers now running."""
        return [p.pid for p in self._processes if p.pid is not None and p.is_alive()]

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking jobs; give running ones ``timeout`` (default ``stop_grace``) s to end.

        Jobs still running then are ended with their workers and run again at the next start.
        """
        self._stopping.set()
        self._stop.set()
        self._wake.set()
        if self._monitor is not None:
            self._monitor.join()
        deadline = time.monotonic() + (self.settings.stop_grace if timeout is None else timeout)
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))

        for process in self._processes:
            if process.is_alive():
                logger.info("ending worker %s and the job it runs", process.pid)
                _end_group(process)
        self._processes = []

    def _spawn(self, index: int) -> BaseProcess:
        process = self._context.Process(
            target=_worker_main,
            args=(
                self.queue.name,
                self.queue.reopen_args(),
                self.settings,
                self._wake,
                self._stop,
                os.getpid(),
            ),
            name=f"lipsync-job-{index}",
            daemon=False,  # a daemonic process may not start the face-analysis processes
        )
        process.start()
        return process

    def _watch(self) -> None:
        while not self._stopping.wait(self.settings.check_interval):
            for index, process in enumerate(self._processes):
                if not process.is_alive() and not self._stopping.is_set():
                    code = process.exitcode
                    logger.warning("worker %s ended (%s); starting another", process.pid, code)
                    self._processes[index] = self._spawn(index)
            try:
                self.queue.requeue_abandoned(self.settings.max_attempts)
            except Exception:  # the monitor keeps watching whatever one look does
                logger.exception("looking for abandoned jobs failed")


def _worker_main(backend, options, settings, wake, stop, parent: int) -> None:
    """A worker process: its own process group, its queue reopened, the loop until told."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    from .. import pipeline  # noqa: F401  (import the models now, not in the first job)

    queue = open_queue(backend, **options)

    def should_stop() -> bool:
        # A new parent means the server died: finish nothing more after the job in hand.
        return stop.is_set() or os.getppid() != parent

    def wait(seconds: float) -> None:
        if wake.wait(seconds):
            wake.clear()

    worker_loop(queue, settings, should_stop=should_stop, wait=wait)


def _end_group(process: BaseProcess) -> None:
    """SIGTERM the worker's process group (the worker and its face processes), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        process.join(wait)
        if not process.is_alive():
            return


class _Heartbeat:
    """Renews a claim's lease every third of it while the job runs (a context manager)."""

    def __init__(self, queue: JobQueue, claim: Claim, lease: float) -> None:
        self.queue, self.claim, self.lease = queue, claim, lease
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lipsync-lease", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(self.lease / 3):
            try:
                if not self.queue.renew(self.claim, self.lease):
                    logger.warning("request %s: lease lost", self.claim.request_id)
                    return
            except Exception:  # a missed renewal is retried at the next beat
                logger.exception("request %s: renewing the lease failed", self.claim.request_id)


class _Progress:
    """The ``dub`` progress callback: phase and overall percentage into the queue."""

    def __init__(self, queue: JobQueue, claim: Claim) -> None:
        self.queue = queue
        self.claim = claim
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
        self.queue.progress(self.claim, name, percent)
