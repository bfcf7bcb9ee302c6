"""Webhook delivery: a signed POST when a request completes or fails, retried with backoff.

The body is the GET /get_status ``data`` object of the request plus ``event``
(``"completed"`` or ``"failed"``), as compact JSON. The webhook's ``headers`` are sent with
it and its ``params`` are added to the URL's query string. ``X-Lipsync-Signature:
sha256=<hex>`` is the HMAC-SHA256 of the exact body bytes under the server's secret, so a
receiver can check that the call came from this server and was not altered.

The secret is, in order: the ``secret`` given to :func:`load_secret` (``create_app``'s
``webhook_secret``), the ``LIPSYNC_WEBHOOK_SECRET`` environment variable, or a random
secret made once per store and kept in ``<home>/server/webhook.secret`` (mode 600; no
endpoint shows it, read it from that file to configure a receiver).

The store is the outbox: jobs finish in worker processes, and the sender, in the server
process, looks every ``poll_interval`` for finished requests whose webhook is neither
delivered nor given up. So a webhook still undelivered when the server stopped (not yet
sent, or waiting between attempts) is sent when it starts again, with the attempts it had
left. Delivery is at least once: a receiver may see a POST again if the server died between
sending it and recording the answer.

Each delivery runs in its own daemon thread, so a slow receiver never holds up the others,
and a delivery that fails every attempt never changes the job's outcome. Every attempt is
recorded in the store (:class:`~lipsync.server.store.WebhookState`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError
from .remote import PrivateAddressError, check_http_url, post_json
from .shapes import status_data
from .store import FAILED, SUCCESS, Store

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Lipsync-Signature"
SECRET_ENV = "LIPSYNC_WEBHOOK_SECRET"
SECRET_FILE = "webhook.secret"
EVENTS = {SUCCESS: "completed", FAILED: "failed"}
# Worth another try: no answer at all, a timeout, throttling, or a server-side failure.
_RETRY_STATUSES = {408, 425, 429}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class WebhookSettings:
    """How webhooks are sent."""

    attempts: int = 3  # POSTs at most per event, the first included
    base_delay: float = 2.0  # seconds before the 2nd attempt; doubled before each next one
    timeout: float = 10.0  # seconds for the connection and for the answer
    poll_interval: float = 1.0  # seconds between looks for finished requests to notify


@dataclass(frozen=True)
class Webhook:
    """Where and how to notify, as the client gave it."""

    url: str  # http(s) URL
    headers: dict[str, str]  # added to the POST
    params: dict[str, str]  # added to the URL's query string


def parse_webhook(value: Any) -> Webhook:
    """A webhook from a URL string or an object ``{url, headers, params}`` (or its JSON).

    Raises:
        InvalidOptionError: no http(s) URL, or headers/params that are not flat objects.
    """
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidOptionError("webhook is not valid JSON") from None
    if isinstance(value, str):
        value = {"url": value}
    if not isinstance(value, dict):
        raise InvalidOptionError("webhook must be a URL or an object with a url")

    url = check_http_url(value.get("url"), "webhook")
    headers = _flat(value.get("headers"), "headers")
    params = _flat(value.get("params"), "params")
    return Webhook(url=url, headers=headers, params=params)


def sign(body: bytes, secret: str) -> str:
    """The signature header's value for ``body``: ``sha256=`` and the HMAC-SHA256 in hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def load_secret(server_root: Path, secret: str | None = None) -> str:
    """The signing secret: ``secret``, else ``$LIPSYNC_WEBHOOK_SECRET``, else the store's own.

    The store's own is made at random the first time and kept in
    ``<server_root>/webhook.secret``, readable by its owner only.
    """
    chosen = secret or os.environ.get(SECRET_ENV)
    if chosen:
        return chosen

    path = Path(server_root) / SECRET_FILE
    if not path.exists():
        # O_EXCL: two servers starting on one store at once keep the same secret.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as sink:
                sink.write(secrets.token_hex(32))
            logger.info("made a webhook signing secret in %s", path)
    return path.read_text().strip()


def target_url(webhook: Webhook) -> str:
    """The webhook's URL with its ``params`` added to whatever query it already has."""
    parts = urllib.parse.urlsplit(webhook.url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query += list(webhook.params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class WebhookSender:
    """Delivers finished requests' webhooks in background threads, from :meth:`start` to
    :meth:`stop`. ``allow_private`` lets webhooks reach non-public addresses (see remote)."""

    def __init__(
        self,
        store: Store,
        secret: str,
        settings: WebhookSettings | None = None,
        allow_private: bool = False,
    ) -> None:
        self.store = store
        self.settings = settings or WebhookSettings()
        self.allow_private = allow_private
        self._secret = secret
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._active: set[str] = set()  # request ids being delivered now
        self._lock = threading.Lock()
        self._poller: threading.Thread | None = None

    def start(self) -> None:
        """Look for due webhooks now (those left by a previous run too) and from then on."""
        self._poller = threading.Thread(target=self._poll, name="lipsync-webhooks", daemon=True)
        self._poller.start()

    def request_done(self, request_id: str) -> None:
        """Start delivering a finished request's webhook, if it has one and it is due;
        never raises."""
        with self._lock:
            if request_id in self._active:
                return
            self._active.add(request_id)
        try:
            job = self.store.request(request_id)
            state = self.store.webhook_state(request_id)
            made = 0 if state is None else state.attempts
            settled = state is not None and (state.delivered_at or state.gave_up_at)
            if not job.webhook or job.status not in EVENTS or settled:
                self._release(request_id)
                return
            if made >= self.settings.attempts:
                self._give_up(request_id, "no attempt left")
                self._release(request_id)
                return
            webhook = parse_webhook(job.webhook)
            body = {**status_data(job), "event": EVENTS[job.status]}
        except Exception:  # a webhook problem must never reach its caller
            logger.exception("request %s: cannot prepare its webhook", request_id)
            self._give_up(request_id, "cannot prepare it")
            self._release(request_id)
            return

        payload = json.dumps(body, separators=(",", ":")).encode()
        thread = threading.Thread(
            target=self._deliver,
            args=(request_id, webhook, payload, made + 1),
            name=f"lipsync-webhook-{request_id[:8]}",
            daemon=True,
        )
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for the deliveries under way to end (retries included); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop looking, cut short the waits between attempts (those deliveries resume at the
        next start) and give running POSTs ``timeout`` to end."""
        self._stopping.set()
        if self._poller is not None:
            self._poller.join()
        self.drain(timeout)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            try:
                for request_id in self.store.due_webhooks():
                    self.request_done(request_id)
            except Exception:  # the next look may fare better (a busy database)
                logger.exception("looking for due webhooks failed")
            self._stopping.wait(self.settings.poll_interval)

    def _deliver(self, request_id: str, webhook: Webhook, payload: bytes, first: int) -> None:
        url = target_url(webhook)
        headers = {**webhook.headers, SIGNATURE_HEADER: sign(payload, self._secret)}
        timeout = self.settings.timeout
        try:
            for attempt in range(first, self.settings.attempts + 1):
                try:
                    status, error = post_json(url, payload, headers, timeout, self.allow_private)
                except PrivateAddressError as exc:  # refused for good: no retry
                    self.store.record_webhook_attempt(request_id, None, f"refused: {exc}")
                    break
                self.store.record_webhook_attempt(request_id, status, error)
                if error is None:
                    logger.info("request %s: webhook delivered (HTTP %s)", request_id, status)
                    return
                logger.info("request %s: webhook attempt %d: %s", request_id, attempt, error)

                retryable = status is None or status >= 500 or status in _RETRY_STATUSES
                if not retryable or attempt == self.settings.attempts:
                    break
                if self._stopping.wait(self.settings.base_delay * 2 ** (attempt - 1)):
                    return  # stopping: the attempts left are made at the next start
            self._give_up(request_id, f"not delivered to {webhook.url}")
        except Exception:  # the thread's last word; the job's outcome stands
            logger.exception("request %s: webhook delivery broke", request_id)
            self._give_up(request_id, "delivery broke")
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
            self._release(request_id)

    def _give_up(self, request_id: str, why: str) -> None:
        logger.warning("request %s: webhook given up: %s", request_id, why)
        try:
            self.store.give_up_webhook(request_id)
        except Exception:  # not recorded: the next look tries it again, which is harmless
            logger.exception("request %s: cannot record the webhook as given up", request_id)

    def _release(self, request_id: str) -> None:
        with self._lock:
            self._active.discard(request_id)


def _flat(value: Any, name: str) -> dict[str, str]:
    """A webhook's headers or params: an object of names to scalar values, as strings."""
    if value is None:
        return {}
    if not isinstance(value, dict) or any(isinstance(v, dict | list) for v in value.values()):
        raise InvalidOptionError(f"webhook {name} must be an object of names to values")
    flat = {str(k): str(v) for k, v in value.items()}
    # Line breaks would let a client write its own headers into the request.
    if any(_CONTROL.search(text) for pair in flat.items() for text in pair):
        raise InvalidOptionError(f"webhook {name} must not contain control characters")
    return flat
