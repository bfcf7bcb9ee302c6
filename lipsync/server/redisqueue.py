"""The ``redis`` job queue: the shim's store decides, Redis carries job ids to remote workers.

The shim records every request in its SQLite store exactly as with the embedded queue; that
table stays the one source of truth (claims with an owner and a lease, one completion per
request). What Redis adds is delivery: each accepted request becomes a Dramatiq message that
names the request id, and ``python -m lipsync worker`` processes on any machine
(:mod:`lipsync.server.remoteworker`) receive those messages, claim the named request from
the shim over HTTP (:mod:`lipsync.server.workerapi`) and run it.

Delivery is at least once; completion is once. A message for a request that is already
claimed or done finds nothing to claim and is dropped, so duplicates are harmless, and the
shim sends them freely whenever a message might have been lost:

- a remote worker that dies mid-job stops renewing its lease; the shim's monitor
  (:meth:`RedisQueue.requeue_abandoned`) takes the claim back and sends a new message, so
  another worker runs the job;
- a worker that dies after receiving a message but before claiming its job leaves that
  message unacknowledged; Dramatiq's broker puts the unacknowledged messages of a worker
  whose heartbeat has stopped back on the queue (``RedisOptions.heartbeat_timeout``);
- a message that could not be sent (Redis unreachable) is sent again at the monitor's next
  look, and a shim that starts sends one for every request still waiting, since the shim
  before it may have stopped between recording a request and sending its message;
- a request left waiting long after its last message is sent again (``resend_after``) if
  that message is no longer in Redis (lost with a Redis restart, or dead-lettered); one
  still queued, or held by a live worker, is left alone, so a long backlog is not sent twice.

Why Dramatiq, of Celery, RQ and Dramatiq:

- Its Redis broker acknowledges a message only after the actor returns, and every broker
  call doubles as a heartbeat; the unacknowledged messages of a broker whose heartbeat has
  stopped are pushed back onto the queue. A worker killed mid-job therefore loses nothing
  in Redis either. RQ, as its documentation describes it, keeps a started job in a
  registry and cleans a dead worker's job out into the failed-job registry; running it
  again is left to a retry policy or to the application. Celery redelivers on Redis only
  with late acknowledgement, after a visibility timeout (an hour by default) that is blind
  to whether the worker lives.
- It is small (redis-py and little else) and runs in-process on threads: a worker here is
  one Python process with one job thread. Celery's default prefork pool forks, and
  MediaPipe's graphs do not survive a fork.
- A message is plain JSON naming an actor and its arguments, so the shim can send one
  without importing the worker's code.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError, MissingDependencyError
from .queues import Claim, SqliteQueue, WorkerId, _claim, register_queue
from .store import Store

logger = logging.getLogger(__name__)

QUEUE_NAME = "lipsync"  # the Dramatiq queue the shim sends to and the workers consume
ACTOR_NAME = "lipsync_dub"  # the actor a message names; its one argument is the request id
_INSTALL = "pip install 'lipsync[queue]'"


@dataclass(frozen=True)
class RedisOptions:
    """Where the Redis server is and how Dramatiq's broker watches its workers."""

    url: str  # redis://host[:port][/db]
    namespace: str = "lipsync"  # prefix of Dramatiq's keys in Redis
    heartbeat_timeout: float = 60.0  # seconds of silence before a worker's messages go back
    # Share of broker calls that also look for silent workers. Dramatiq's default (0.1 %)
    # finds one after minutes on a quiet queue; a few workers polling make 1 % cheap.
    maintenance_chance: float = 0.01
    connect_timeout: float = 5.0  # seconds to reach Redis before a call fails


def check_url(url: str) -> str:
    """``url`` if it names a Redis server (``redis://`` or ``rediss://``).

    Raises:
        InvalidOptionError: any other kind of address.
    """
    if not url.startswith(("redis://", "rediss://")):
        raise InvalidOptionError(
            f"the redis job queue needs a redis:// address, got {url!r}",
            hint="e.g. redis://127.0.0.1:6379/0",
        )
    return url


def open_broker(options: RedisOptions) -> Any:
    """A Dramatiq Redis broker with the lipsync queue declared.

    Raises:
        MissingDependencyError: Dramatiq or redis-py is not installed.
    """
    try:
        from dramatiq.brokers.redis import RedisBroker
        from dramatiq.middleware import default_middleware
    except ImportError as exc:
        raise MissingDependencyError(
            f"the redis job queue needs Dramatiq and redis-py ({exc.name} is missing)",
            hint=_INSTALL,
        ) from exc

    # Dramatiq adds its Prometheus exporter when prometheus_client is importable; it expects
    # the dramatiq command's process setup, and we export no metrics.
    middleware = [m() for m in default_middleware if m.__name__ != "Prometheus"]
    broker = RedisBroker(
        url=check_url(options.url),
        middleware=middleware,
        namespace=options.namespace,
        heartbeat_timeout=int(options.heartbeat_timeout * 1000),
        maintenance_chance=int(options.maintenance_chance * 1_000_000),
        socket_connect_timeout=options.connect_timeout,
        socket_timeout=options.connect_timeout * 2,
    )
    broker.declare_queue(QUEUE_NAME)
    return broker


def job_message(request_id: str) -> Any:
    """The Dramatiq message that tells a worker to claim and run ``request_id``."""
    from dramatiq import Message

    return Message(
        queue_name=QUEUE_NAME, actor_name=ACTOR_NAME, args=(request_id,), kwargs={}, options={}
    )


@register_queue
class RedisQueue(SqliteQueue):
    """The store's requests table as the truth, with a Redis message sent for each job.

    Every worker takes its jobs from the messages: remote workers claim what a message names
    over HTTP, and local worker processes (``serve --workers N``) claim it from the store
    directly (:meth:`claim`), so each message is used up by whichever worker runs its job.
    """

    name = "redis"
    # How long a local worker's look for a message waits for one to come (ms).
    CLAIM_WAIT_MS = 500
    # Messages of jobs already claimed or done dropped in one look before it gives up.
    STALE_PER_LOOK = 32

    def __init__(
        self,
        home: str | Path | None = None,
        *,
        store: Store | None = None,
        url: str | None = None,
        heartbeat_timeout: float = RedisOptions.heartbeat_timeout,
        resend_after: float = 900.0,
    ) -> None:
        """``resend_after``: seconds a request may wait after its last message before the
        monitor sends another (the first may have been lost with a Redis restart, or
        dead-lettered after its worker failed to reach the shim for all its retries)."""
        super().__init__(home, store=store)
        if url is None:
            raise InvalidOptionError("the redis job queue needs an address (redis://host:port)")
        self.options = RedisOptions(url=check_url(url), heartbeat_timeout=heartbeat_timeout)
        self.resend_after = resend_after
        self.broker = open_broker(self.options)
        self._lock = threading.Lock()
        self._unsent: dict[str, None] = {}  # ids whose message has yet to go out, in order
        # id of a waiting request -> (monotonic time of its last send, that message's Redis id)
        self._sent: dict[str, tuple[float, str]] = {}
        self._consumer: Any = None  # a local worker's Redis consumer, made at its first claim

    def reopen_args(self) -> dict[str, Any]:
        return {
            "home": str(self.home),
            "url": self.options.url,
            "heartbeat_timeout": self.options.heartbeat_timeout,
            "resend_after": self.resend_after,
        }

    def claim(self, worker: WorkerId, lease: float) -> Claim | None:
        """The job the next message names, claimed for a local ``worker``; None if none came.

        The message is acknowledged once the claim is made (or the job is found claimed or
        done elsewhere): from then on the store's lease, not Redis, keeps the job safe.
        """
        if self._consumer is None:
            self._consumer = self.broker.consume(QUEUE_NAME, prefetch=1, timeout=self.CLAIM_WAIT_MS)
        for _ in range(self.STALE_PER_LOOK):
            message = next(self._consumer)
            if message is None:
                return None
            request_id = str(message.args[0]) if message.args else ""
            claimed = self.store.claim_request(request_id, str(worker), time.time() + lease)
            self._consumer.ack(message)
            if claimed is not None:
                return _claim(claimed)
            logger.debug("request %s: not waiting any more; message dropped", request_id)
        return None

    def enqueue(self, request_id: str) -> None:
        with self._lock:
            self._unsent[request_id] = None
        self._send_unsent()

    def requeue_abandoned(self, max_attempts: int) -> list[str]:
        taken = super().requeue_abandoned(max_attempts)

        # Waiting requests this shim has sent nothing for lately get a message: at the first
        # look, all of them (the shim before may have stopped between recording a request
        # and sending it); later, those taken back just now and those waiting too long.
        now = time.monotonic()
        waiting = self.store.pending()
        with self._lock:
            for request_id in taken:
                self._sent.pop(request_id, None)  # its last message was used up by the claim
            self._sent = {i: self._sent[i] for i in waiting if i in self._sent}
            last = {i: self._sent.get(i, (-math.inf, "")) for i in waiting}
            due = [i for i in waiting if now - last[i][0] > self.resend_after]

        # A due request whose message Redis still holds (queued, or fetched by a worker that
        # lives) needs no other: look again after another resend_after.
        alive = self._still_in_redis([last[i][1] for i in due])
        with self._lock:
            for request_id in due:
                if last[request_id][1] in alive:
                    self._sent[request_id] = (now, last[request_id][1])
                else:
                    self._unsent[request_id] = None
        self._send_unsent()
        return taken

    def _still_in_redis(self, message_ids: list[str]) -> set[str]:
        """Those of ``message_ids`` that Dramatiq's queue still holds, not yet acknowledged."""
        ids = [i for i in message_ids if i]
        if not ids:
            return set()
        key = f"{self.options.namespace}:{QUEUE_NAME}.msgs"  # Dramatiq's id -> message hash
        try:
            held = self.broker.client.hmget(key, ids)
        except Exception as exc:  # Redis unreachable: sending is tried, and fails, as usual
            logger.warning("looking up messages in Redis failed (%s)", exc)
            return set()
        return {i for i, data in zip(ids, held, strict=True) if data is not None}

    def _send_unsent(self) -> None:
        """Send the messages not yet sent; those Redis refuses wait for the next call."""
        with self._lock:
            waiting = list(self._unsent)
        for request_id in waiting:
            try:
                sent = self.broker.enqueue(job_message(request_id))
            except Exception as exc:  # Redis down or restarting: the monitor tries again
                logger.warning("request %s: sending to Redis failed (%s)", request_id, exc)
                return
            with self._lock:
                self._unsent.pop(request_id, None)
                self._sent[request_id] = (time.monotonic(), sent.options["redis_message_id"])
            logger.debug("request %s: sent to Redis", request_id)
