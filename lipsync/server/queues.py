"""The job queue behind the shim: one small interface and a registry of backends.

The API process enqueues and reads; workers, in other processes (and, with a networked
backend, on other machines), claim jobs, report progress, and finish or fail them. A claim
carries its owner (:class:`WorkerId`) and a lease the worker renews while it runs. A claim
whose owner is gone (a process of this machine that has ended, or, for an owner elsewhere,
a lease that ran out) is taken back and queued again, so nothing accepted is lost. Every
write a worker makes lands only while it still holds the claim, so no job completes twice.

``sqlite`` is the embedded backend: the store's ``requests`` table is the queue and the
workers are local processes. ``redis`` (:mod:`lipsync.server.redisqueue`) keeps that table as
the truth and carries job ids to workers on other machines through Redis. Another backend
subclasses :class:`JobQueue`, registers with :func:`register_queue`, and is chosen by name
(``ServerSettings.queue``).
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import InternalError, InvalidOptionError, LipsyncError
from .store import Request, Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerId:
    """Who holds a claim: a process on a host, told apart from a later one with its pid."""

    host: str  # socket.gethostname() of the worker's machine
    pid: int  # the worker's process id
    started: int  # its start time in clock ticks since boot (Linux); 0 where unknown

    @classmethod
    def current(cls) -> WorkerId:
        """The calling process."""
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _start_ticks(pid) or 0)

    @classmethod
    def parse(cls, text: str | None) -> WorkerId | None:
        """A WorkerId from its ``str``; None for anything else."""
        parts = (text or "").rsplit("/", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        return cls(parts[0], int(parts[1]), int(parts[2]))

    def __str__(self) -> str:
        return f"{self.host}/{self.pid}/{self.started}"

    def is_local(self) -> bool:
        return self.host == socket.gethostname()

    def is_gone(self) -> bool:
        """Whether this local process has ended (a reused pid with another start time counts)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # someone else's process now has that pid
            return True
        started = _start_ticks(self.pid)
        return bool(self.started and started is not None and started != self.started)


@dataclass(frozen=True)
class Claim:
    """A job as a worker holds it."""

    request_id: str  # the API's request id
    model: str  # generator name
    intensity: int  # 1..3
    owner: str  # str(WorkerId) of the holder; every write checks it
    attempt: int  # 1 on the first run, more after a worker died holding the job
    video_asset: int  # asset ids; JobQueue.inputs turns them into files
    audio_asset: int


class JobQueue(ABC):
    """Where accepted jobs wait, and how workers take, report and settle them."""

    name: ClassVar[str]

    @abstractmethod
    def reopen_args(self) -> dict[str, Any]:
        """Picklable keyword arguments: ``open_queue(self.name, **args)`` in a worker process."""

    @abstractmethod
    def enqueue(self, request_id: str) -> None:
        """Make a request the store has just recorded as PENDING available to workers."""

    @abstractmethod
    def claim(self, worker: WorkerId, lease: float) -> Claim | None:
        """The oldest waiting job, now held by ``worker`` for ``lease`` seconds; None if none."""

    @abstractmethod
    def inputs(self, claim: Claim) -> tuple[Path, Path]:
        """Local files of the job's video and audio (a remote backend downloads them)."""

    @abstractmethod
    def output_path(self, claim: Claim) -> Path:
        """Where this claim writes its video (distinct per attempt)."""

    @abstractmethod
    def renew(self, claim: Claim, lease: float) -> bool:
        """Extend the lease by ``lease`` seconds from now; False once the claim is lost."""

    @abstractmethod
    def progress(self, claim: Claim, phase: str, percent: float) -> bool:
        """Record the phase and overall progress; False once the claim is lost."""

    @abstractmethod
    def finish(self, claim: Claim, output: Path) -> bool:
        """Record success with the written output; False (nothing recorded) if the claim is lost."""

    @abstractmethod
    def fail(self, claim: Claim, error: LipsyncError) -> bool:
        """Record the job's failure; False (nothing recorded) if the claim is lost."""

    @abstractmethod
    def requeue_abandoned(self, max_attempts: int) -> list[str]:
        """Take back claims whose owner is gone; queue them again, or fail a job whose worker
        died ``max_attempts`` times. Returns the request ids taken back."""


QUEUES: dict[str, type[JobQueue]] = {}

# Backends of this package that live in modules of their own, by name.
_BUILT_IN = {"redis": ".redisqueue"}

# Where the shim serves its remote workers (lipsync.server.workerapi), under its root URL.
WORKER_PATH = "/lipsync/worker/v1"

# Owners that claimed over HTTP (lipsync.server.workerapi) carry this prefix. Such a worker
# may run in another pid namespace even when its host name is ours (a container sharing the
# host's network), so its pid proves nothing: only its lease says whether it still lives.
REMOTE_OWNER = "remote:"


def register_queue(cls: type[JobQueue]) -> type[JobQueue]:
    """Class decorator: make a backend available to :func:`open_queue` under ``cls.name``."""
    QUEUES[cls.name] = cls
    return cls


def open_queue(name: str, **options: Any) -> JobQueue:
    """The registered backend ``name``, built with ``options``.

    Raises:
        InvalidOptionError: no backend of that name is registered.
    """
    if name not in QUEUES and name in _BUILT_IN:
        # Imported on first use: a backend's client library is an optional extra.
        importlib.import_module(_BUILT_IN[name], __package__)
    if name not in QUEUES:
        raise InvalidOptionError(f"unknown job queue {name!r}; known: {sorted(QUEUES)}")
    return QUEUES[name](**options)


@register_queue
class SqliteQueue(JobQueue):
    """The embedded backend: the store's requests table, for workers on this machine."""

    name = "sqlite"

    def __init__(self, home: str | Path | None = None, *, store: Store | None = None) -> None:
        if store is None and home is None:
            raise InvalidOptionError("the sqlite job queue needs the store's home folder")
        self.store = store if store is not None else Store(Path(home))
        self.home = self.store.root.parent

    def reopen_args(self) -> dict[str, Any]:
        return {"home": str(self.home)}

    def enqueue(self, request_id: str) -> None:
        pass  # the PENDING row is the queue entry; workers poll for it

    def claim(self, worker: WorkerId, lease: float) -> Claim | None:
        request = self.store.claim_next(str(worker), time.time() + lease)
        return None if request is None else _claim(request)

    def inputs(self, claim: Claim) -> tuple[Path, Path]:
        return self.store.asset_path(claim.video_asset), self.store.asset_path(claim.audio_asset)

    def output_path(self, claim: Claim) -> Path:
        return self.store.output_path(claim.request_id, claim.attempt)

    def renew(self, claim: Claim, lease: float) -> bool:
        return self.store.renew(claim.request_id, claim.owner, time.time() + lease)

    def progress(self, claim: Claim, phase: str, percent: float) -> bool:
        return self.store.set_progress(claim.request_id, phase, percent, owner=claim.owner)

    def finish(self, claim: Claim, output: Path) -> bool:
        return self.store.finish(claim.request_id, output, owner=claim.owner)

    def fail(self, claim: Claim, error: LipsyncError) -> bool:
        return self.store.fail(
            claim.request_id, error.code, error.name, str(error), owner=claim.owner
        )

    def requeue_abandoned(self, max_attempts: int) -> list[str]:
        taken: list[str] = []
        for job in self.store.running():
            if not _abandoned(job):
                continue
            taken.append(job.request_id)
            # The owner is gone, so nothing writes its half-made output any more.
            for partial in self.store.output_dir.glob(f".{job.request_id}-*.part"):
                partial.unlink(missing_ok=True)
            if job.attempts < max_attempts:
                if self.store.requeue(job.request_id, job.owner):
                    logger.info("request %s: its worker is gone; queued again", job.request_id)
                continue

            # A job whose worker keeps dying (memory, a crash in a native library) stops here.
            error = InternalError(
                f"the job's worker stopped {job.attempts} times before finishing it",
                hint="the inputs may need more memory than this machine has",
            )
            self.store.fail(job.request_id, error.code, error.name, str(error), owner=job.owner)
            logger.warning("request %s: failed after %d attempts", job.request_id, job.attempts)
        return taken


def _abandoned(job: Request) -> bool:
    """A running job's owner is gone: its local process ended, or a remote owner's lease ran out."""
    if job.owner and job.owner.startswith(REMOTE_OWNER):
        return job.lease_until is None or job.lease_until < time.time()

    owner = WorkerId.parse(job.owner)
    if owner is None:
        return True
    if owner.is_local():
        # The process is known exactly here; a slow renewal must not steal a live job.
        return owner.is_gone()
    return job.lease_until is None or job.lease_until < time.time()


def _claim(request: Request) -> Claim:
    return Claim(
        request_id=request.request_id,
        model=request.model,
        intensity=request.intensity,
        owner=request.owner or "",
        attempt=request.attempts,
        video_asset=request.video_asset,
        audio_asset=request.audio_asset,
    )


def _start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks since boot, from /proc; None where unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (the command) may hold spaces and parentheses: count from the last ")".
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None
