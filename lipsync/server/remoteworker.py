"""A job worker for any machine: Redis brings job ids, the shim's HTTP API everything else.

``python -m lipsync worker --queue redis://HOST --shim URL`` runs :func:`run_worker`: a
Dramatiq worker with one job thread. Its actor receives a request id, claims that request
from the shim (:mod:`lipsync.server.workerapi`), and runs it with the same
:func:`~lipsync.server.jobs.run_job` and lease heartbeat as the shim's own workers. What
those shared parts see is :class:`ShimQueue`, a :class:`~lipsync.server.queues.JobQueue`
whose every method is an HTTP call: inputs are downloaded into a scratch folder, progress
and the lease go back as they change, and the output is uploaded when done. No disk is
shared with the shim.

A shim that is away (restarting) is waited for: each call is retried with a growing pause
for ``WorkerOptions.shim_retry`` seconds. A lease that runs out meanwhile is taken back by
the shim, and this worker's late writes are then refused (409) and dropped.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InternalError, InvalidOptionError, LipsyncError, MissingDependencyError
from .jobs import JobSettings, _Heartbeat, run_job
from .queues import WORKER_PATH, Claim, JobQueue, WorkerId
from .redisqueue import _INSTALL, ACTOR_NAME, QUEUE_NAME, RedisOptions, open_broker

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
# A job may run for hours on a CPU; the lease, not a clock, tells when it is abandoned.
_TIME_LIMIT_MS = 48 * 3600 * 1000


class ShimUnreachableError(InternalError):
    """The shim did not answer (or answered 5xx) for as long as the worker waits for it."""


@dataclass(frozen=True)
class WorkerOptions:
    """One remote worker: where its shim and Redis are, and how it runs jobs."""

    shim: str  # the shim's root URL, e.g. http://10.0.0.5:8000
    token: str  # the worker secret, the same as the shim's LIPSYNC_WORKER_TOKEN
    redis: RedisOptions  # the Redis server the shim sends job ids to
    jobs: JobSettings = field(default_factory=JobSettings)  # lease, face workers, max duration
    shim_retry: float = 120.0  # seconds a call is retried while the shim does not answer


class ShimQueue(JobQueue):
    """The shim's queue as a remote worker reaches it: over HTTP, with the worker token."""

    name = "shim"  # not registered: a shim never opens it, only workers do

    def __init__(
        self,
        shim: str,
        token: str,
        *,
        retry_for: float = WorkerOptions.shim_retry,
        scratch: Path | None = None,
        timeout: float = 60.0,
    ) -> None:
        import httpx

        self.shim = shim.rstrip("/")
        self.token = token
        self.retry_for = retry_for
        self.scratch = Path(scratch) if scratch else Path(tempfile.mkdtemp(prefix="lipsync-"))
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._http = httpx.Client(
            base_url=self.shim + WORKER_PATH,
            headers={"authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        self._suffixes: dict[str, dict[str, str]] = {}  # request id -> input file suffixes

    def reopen_args(self) -> dict[str, Any]:
        return {"shim": self.shim, "token": self.token, "retry_for": self.retry_for}

    def enqueue(self, request_id: str) -> None:
        raise InternalError("a worker does not queue jobs; the shim does")

    def ping(self) -> None:
        """Check that the shim answers and accepts the token, before any message is taken.

        Raises:
            InvalidOptionError: the shim refuses the token.
            ShimUnreachableError: the shim did not answer.
        """
        response = self._call("GET", "/ping", self.retry_for)
        if response.status_code in (401, 404):
            # 404: a shim without a worker token has no worker endpoints at all.
            raise InvalidOptionError(
                f"the shim at {self.shim} refused the worker token ({response.status_code})",
                hint="give the shim and every worker the same LIPSYNC_WORKER_TOKEN",
            )
        _check(response, "ping")

    def claim(self, worker: WorkerId, lease: float) -> Claim | None:
        return self.claim_request(None, worker, lease)

    def claim_request(self, request_id: str | None, worker: WorkerId, lease: float) -> Claim | None:
        """Claim ``request_id`` (None: the oldest waiting job); None if it is not waiting."""
        body = {"worker": str(worker), "lease": lease, "request_id": request_id}
        response = self._call("POST", "/claim", self.retry_for, json=body)
        _check(response, "claim")
        answer = response.json()
        if answer["claim"] is None:
            return None
        claim = Claim(**answer["claim"])
        self._suffixes[claim.request_id] = answer["suffixes"]
        return claim

    def inputs(self, claim: Claim) -> tuple[Path, Path]:
        folder = self._folder(claim)
        suffixes = self._suffixes.get(claim.request_id, {})
        video = folder / f"video{suffixes.get('video', '.mp4')}"
        audio = folder / f"audio{suffixes.get('audio', '.wav')}"
        for kind, target in (("video", video), ("audio", audio)):
            self._download(f"/jobs/{claim.request_id}/inputs/{kind}", claim.owner, target)
        return video, audio

    def output_path(self, claim: Claim) -> Path:
        return self._folder(claim) / "output.mp4"

    def renew(self, claim: Claim, lease: float) -> bool:
        # Retried for a third of the lease at most: the next beat tries again anyway.
        body = {"owner": claim.owner, "lease": lease}
        response = self._call("POST", f"/jobs/{claim.request_id}/renew", lease / 3, json=body)
        return _held(response, "renew")

    def progress(self, claim: Claim, phase: str, percent: float) -> bool:
        # Progress is for people watching: a missed update must never stop the job.
        body = {"owner": claim.owner, "phase": phase, "percent": percent}
        try:
            response = self._call("POST", f"/jobs/{claim.request_id}/progress", 5.0, json=body)
            return _held(response, "progress")
        except LipsyncError as exc:
            logger.warning("request %s: progress not sent (%s)", claim.request_id, exc)
            return False

    def finish(self, claim: Claim, output: Path) -> bool:
        path = f"/jobs/{claim.request_id}/output"
        try:
            response = self._call(
                "PUT",
                path,
                self.retry_for,
                params={"owner": claim.owner},
                headers={"content-type": "video/mp4"},
                content=lambda: _chunks(output),
            )
            return _held(response, "output upload")
        except LipsyncError as exc:
            # Unsent, the job's lease runs out and the shim gives it to another worker.
            logger.error("request %s: output not delivered (%s)", claim.request_id, exc)
            return False

    def fail(self, claim: Claim, error: LipsyncError) -> bool:
        body = {
            "owner": claim.owner,
            "code": error.code,
            "name": error.name,
            "message": str(error)[:4000],
        }
        try:
            response = self._call(
                "POST", f"/jobs/{claim.request_id}/fail", self.retry_for, json=body
            )
            return _held(response, "fail")
        except LipsyncError as exc:
            logger.error("request %s: failure not delivered (%s)", claim.request_id, exc)
            return False

    def requeue_abandoned(self, max_attempts: int) -> list[str]:
        return []  # the shim's monitor takes claims back; a worker has none but its own

    def release(self, claim: Claim) -> None:
        """Delete the job's scratch files (its inputs and output)."""
        self._suffixes.pop(claim.request_id, None)
        shutil.rmtree(self._folder(claim), ignore_errors=True)

    def close(self) -> None:
        self._http.close()

    def _folder(self, claim: Claim) -> Path:
        folder = self.scratch / f"{claim.request_id}-{claim.attempt}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _download(self, path: str, owner: str, target: Path) -> None:
        """Stream one input into ``target`` (through a partial file), retrying as calls do."""
        partial = target.with_name(target.name + ".part")

        def fetch():
            with self._http.stream("GET", path, params={"owner": owner}) as response:
                if response.is_success:
                    with open(partial, "wb") as sink:
                        for block in response.iter_bytes(_CHUNK):
                            sink.write(block)
                else:
                    response.read()
            return response

        response = self._retrying(path, self.retry_for, fetch)
        _check(response, "input download")
        partial.replace(target)

    def _call(
        self, method: str, path: str, retry_for: float, *, content: Callable | None = None, **kw
    ):
        def send():
            body = {} if content is None else {"content": content()}
            return self._http.request(method, path, **body, **kw)

        return self._retrying(path, retry_for, send)

    def _retrying(self, path: str, retry_for: float, attempt: Callable[[], Any]):
        """``attempt()`` until it answers below 500, or ``retry_for`` seconds have gone."""
        import httpx

        deadline = time.monotonic() + retry_for
        pause = 0.25
        while True:
            try:
                response = attempt()
                if response.status_code < 500:
                    return response
                problem = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() + pause > deadline:
                raise ShimUnreachableError(
                    f"the shim at {self.shim} did not answer {path} ({problem})",
                    hint="check that `python -m lipsync serve` runs there and is reachable",
                )
            logger.info("shim call %s failed (%s); again in %.1f s", path, problem, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def run_worker(options: WorkerOptions, stop: threading.Event) -> None:
    """Take jobs from Redis and run them, one at a time, until ``stop`` is set.

    Raises:
        MissingDependencyError: Dramatiq, redis-py or httpx is not installed.
        InvalidOptionError: the shim refuses the worker token.
        ShimUnreachableError: the shim did not answer for ``shim_retry`` seconds.
    """
    try:
        import dramatiq
        import httpx  # noqa: F401  (ShimQueue's client)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the remote worker needs Dramatiq, redis-py and httpx ({exc.name} is missing)",
            hint=_INSTALL,
        ) from exc
    from .. import pipeline  # noqa: F401  (load the models now, not in the first job)

    broker = open_broker(options.redis)
    shim = ShimQueue(options.shim, options.token, retry_for=options.shim_retry)
    try:
        # A worker that cannot work for this shim must not take its messages.
        shim.ping()
        _declare_actor(broker, shim, options.jobs)
        worker = dramatiq.Worker(broker, queues={QUEUE_NAME}, worker_threads=1)
        # One message in hand at a time: a second one prefetched behind the running job would
        # sit in this worker's unacknowledged set, out of reach of idle workers.
        worker.queue_prefetch = 1
        worker.start()
        logger.info(
            "worker %s ready: jobs from %s for %s", WorkerId.current(), _safe(options), options.shim
        )

        try:
            stop.wait()
        finally:
            grace = options.jobs.stop_grace
            logger.info("worker stopping; a running job gets %g s to end", grace)
            worker.stop(timeout=int(grace * 1000))
    finally:
        shim.close()
        shutil.rmtree(shim.scratch, ignore_errors=True)


def _declare_actor(broker: Any, shim: ShimQueue, settings: JobSettings) -> Any:
    """The actor the shim's messages name, bound to this worker's shim and settings."""
    import dramatiq

    def lipsync_dub(request_id: str) -> None:
        claim = shim.claim_request(request_id, WorkerId.current(), settings.lease)
        if claim is None:
            # At-least-once delivery: the job is running elsewhere, done, or unknown.
            logger.info("request %s: not waiting any more; message dropped", request_id)
            return
        try:
            with _Heartbeat(shim, claim, settings.lease):
                run_job(shim, claim, settings)
        finally:
            shim.release(claim)

    options = {
        # A shim away for longer than shim_retry: try the message again later.
        "max_retries": 50,
        "min_backoff": 1000,
        "max_backoff": 60_000,
        "time_limit": _TIME_LIMIT_MS,
    }
    return dramatiq.Actor(
        lipsync_dub,
        broker=broker,
        actor_name=ACTOR_NAME,
        queue_name=QUEUE_NAME,
        priority=0,
        options=options,
    )


def _held(response, what: str) -> bool:
    """True for 2xx, False for 409 (the claim is lost); anything else is an error."""
    if response.status_code == 409:
        return False
    _check(response, what)
    return True


def _check(response, what: str) -> None:
    if not response.is_success:
        raise InternalError(
            f"the shim refused the {what} ({response.status_code}): {response.text[:300]}",
            hint="check that the worker's LIPSYNC_WORKER_TOKEN matches the shim's",
        )


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as source:
        while block := source.read(_CHUNK):
            yield block


def _safe(options: WorkerOptions) -> str:
    """The Redis address without a password, for the log."""
    scheme, _, rest = options.redis.url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"
