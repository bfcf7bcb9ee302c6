"""The shim's durable store: SQLite (WAL) for assets and requests, a folder for media.

Everything lives under ``<home>/server``: ``lipsync.db``, ``media/`` (uploads, named by
content hash) and ``outputs/`` (finished videos, named by request id and attempt). API keys
are never written down; rows carry a short hash of the key that owns them.

The ``requests`` table is also the embedded job queue (:mod:`lipsync.server.queues`): a
worker claims a PENDING row by writing its owner and a lease into it, and every later write
of that worker (progress, finish, fail) only lands while the row still carries that owner.
A claim taken back from a worker that died therefore cannot be completed a second time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ..errors import InsufficientCreditsError, LimitExceededError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    media_type TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    created TEXT NOT NULL,
    duration REAL,
    UNIQUE (key, media_type, sha256)
);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    intensity INTEGER NOT NULL,
    webhook TEXT,
    status TEXT NOT NULL,
    phase TEXT,
    progress REAL NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    completed_at TEXT,
    error_code TEXT,
    error_name TEXT,
    error_message TEXT,
    video_asset INTEGER NOT NULL REFERENCES assets (id),
    audio_asset INTEGER NOT NULL REFERENCES assets (id),
    output TEXT,
    seq INTEGER NOT NULL,
    seconds REAL NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_by_key ON requests (key, seq);
CREATE INDEX IF NOT EXISTS requests_by_status ON requests (status, seq);
CREATE TABLE IF NOT EXISTS webhooks (
    request_id TEXT PRIMARY KEY REFERENCES requests (request_id),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER,
    last_error TEXT,
    last_attempt_at TEXT,
    delivered_at TEXT,
    gave_up_at TEXT
);
"""
# Columns added after the first release of the schema: a store made before gets them at open.
_ADDED_COLUMNS = {
    "assets": {"duration": "REAL"},
    "requests": {
        "seconds": "REAL NOT NULL DEFAULT 0",
        "owner": "TEXT",
        "lease_until": "REAL",
        "attempts": "INTEGER NOT NULL DEFAULT 0",
    },
    "webhooks": {"gave_up_at": "TEXT"},
}

# Request states as stored; the API's words for them are chosen in app.py.
PENDING, RUNNING, SUCCESS, FAILED = "pending", "running", "success", "failed"


@dataclass(frozen=True)
class Asset:
    """One stored upload, as one key sees it."""

    id: int  # the API's integer asset_id
    key: str  # hash of the owning API key
    media_type: str  # "video" or "audio"
    sha256: str  # of the file's bytes; one row per key, type and content
    path: Path  # the media file on disk
    created: str  # ISO time, UTC, seconds
    duration: float | None  # seconds of media; None in rows kept before durations were


@dataclass(frozen=True)
class Request:
    """One dubbing job and where it stands."""

    request_id: str  # 32 hex digits
    key: str  # hash of the owning API key
    model: str  # generator name
    intensity: int  # 1..3
    webhook: str | None  # the webhook as submitted, JSON text (delivery: WebhookState)
    status: str  # PENDING, RUNNING, SUCCESS or FAILED
    phase: str | None  # the pipeline phase running now (or last run)
    progress: float  # 0..100, across all phases
    created_at: str  # ISO time, UTC, seconds
    completed_at: str | None  # set on success or failure
    error_code: str | None  # ERR_xxx when failed
    error_name: str | None  # e.g. NO_FACE_FOUND
    error_message: str | None  # for a person
    video_asset: int  # asset id
    audio_asset: int  # asset id
    output: Path | None  # the finished video
    seconds: float  # charged against the key's quota (the video's duration); 0 without one
    owner: str | None  # the worker holding the claim while RUNNING (see queues.WorkerId)
    lease_until: float | None  # epoch seconds; the claim is abandoned after it unless renewed
    attempts: int  # claims so far (1 on the first run; more after a worker died)


@dataclass(frozen=True)
class WebhookState:
    """How delivering one request's webhook has gone so far."""

    request_id: str  # whose webhook
    attempts: int  # POSTs made, successful or not
    last_status: int | None  # HTTP status of the last attempt; None when no answer came
    last_error: str | None  # why the last attempt failed; None once delivered
    last_attempt_at: str | None  # ISO time, UTC, seconds
    delivered_at: str | None  # when a 2xx came back; None while undelivered
    gave_up_at: str | None  # when delivery stopped without success; None while it may go on


class UploadTooLargeError(LimitExceededError):
    """An uploaded file is larger than the server accepts (HTTP 413, code ERR_009)."""


class UploadSink:
    """One upload being written into the store's upload folder: hashed as it comes, and
    refused (UploadTooLargeError) once it passes its limit. ``finish`` or ``abort`` it."""

    def __init__(self, folder: Path, suffix: str, limit: int) -> None:
        fd, name = tempfile.mkstemp(dir=folder, suffix=suffix.lower())
        self.path = Path(name)
        self.limit = limit
        self.size = 0
        self._file = os.fdopen(fd, "wb")
        self._digest = hashlib.sha256()

    def write(self, block: bytes) -> None:
        self.size += len(block)
        if self.size > self.limit:
            raise UploadTooLargeError(
                f"the upload is larger than the limit of {self.limit} bytes",
                hint="send a shorter or more compressed file",
            )
        self._digest.update(block)
        self._file.write(block)

    def finish(self) -> tuple[Path, str]:
        """The whole file and its SHA-256."""
        self._file.close()
        return self.path, self._digest.hexdigest()

    def abort(self) -> None:
        """Close and delete the partial file."""
        self._file.close()
        self.path.unlink(missing_ok=True)


def key_id(api_key: str) -> str:
    """The short hash that stands for an API key in the store."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def now() -> str:
    """The current UTC time as the API writes it: ``2026-04-07T04:13:23``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


class Store:
    """Assets, requests and media files under ``<home>/server``; safe to share across threads."""

    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "server"
        self.media_dir = self.root / "media"
        self.output_dir = self.root / "outputs"
        self.upload_dir = self.root / "uploads"
        for folder in (self.media_dir, self.output_dir, self.upload_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "lipsync.db"
        # One writer at a time inside this process; SQLite's own lock covers other processes.
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            _add_missing_columns(db)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    # --- assets ---------------------------------------------------------------------------

    def receive(self, source: BinaryIO, suffix: str, limit: int) -> tuple[Path, str]:
        """Copy an upload to a temporary file in chunks, hashing as it goes.

        Returns the file (named with ``suffix``, so the media checks see the extension) and
        its SHA-256. Raises UploadTooLargeError once more than ``limit`` bytes have come.
        """
        sink = self.open_upload(suffix, limit)
        try:
            while block := source.read(_CHUNK):
                sink.write(block)
        except BaseException:
            sink.abort()
            raise
        return sink.finish()

    def open_upload(self, suffix: str, limit: int) -> UploadSink:
        """A new file in the upload folder to write an upload into, piece by piece."""
        return UploadSink(self.upload_dir, suffix, limit)

    def clear_uploads(self) -> int:
        """Delete uploads left half-received by a server that stopped; how many.

        Only for a server starting on this store: it is the one process that receives.
        """
        left = [path for path in self.upload_dir.iterdir() if path.is_file()]
        for path in left:
            path.unlink(missing_ok=True)
        return len(left)

    def add_asset(
        self, key: str, media_type: str, received: Path, sha256: str, duration: float
    ) -> Asset:
        """Keep a received (and checked) file as an asset; the same bytes are kept once."""
        target = self.media_dir / f"{sha256}{received.suffix}"
        if target.exists():
            received.unlink()
        else:
            os.replace(received, target)

        with self._lock, self._connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO assets (key, media_type, sha256, path, created, duration) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key, media_type, sha256, str(target), now(), duration),
            )
            db.execute(
                "UPDATE assets SET duration = ? WHERE key = ? AND media_type = ? AND sha256 = ? "
                "AND duration IS NULL",
                (duration, key, media_type, sha256),
            )
            row = db.execute(
                "SELECT * FROM assets WHERE key = ? AND media_type = ? AND sha256 = ?",
                (key, media_type, sha256),
            ).fetchone()
        return _asset(row)

    def get_asset(self, key: str, asset_id: int) -> Asset | None:
        """The asset if it exists and belongs to ``key``; None otherwise (never another's)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM assets WHERE id = ? AND key = ?", (asset_id, key)
            ).fetchone()
        return None if row is None else _asset(row)

    def set_duration(self, asset_id: int, duration: float) -> None:
        """Record the duration of an asset kept before durations were stored."""
        with self._connect() as db:
            db.execute("UPDATE assets SET duration = ? WHERE id = ?", (duration, asset_id))

    def list_assets(self, key: str) -> list[Asset]:
        """All of a key's assets, oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM assets WHERE key = ? ORDER BY id", (key,)).fetchall()
        return [_asset(row) for row in rows]

    # --- requests -------------------------------------------------------------------------

    def create_request(
        self,
        key: str,
        model: str,
        intensity: int,
        video: int,
        audio: int,
        webhook: str | None,
        *,
        seconds: float = 0.0,
        quota: float | None = None,
    ) -> Request:
        """Queue a new job; it waits as PENDING until a worker claims it.

        ``seconds`` are charged to ``key``; with a ``quota`` (seconds), the job is refused
        when the key's charges (its jobs that have not failed) would pass it.

        Raises:
            InsufficientCreditsError: the job would take the key over its quota.
        """
        request_id = uuid.uuid4().hex
        with self._lock, self._connect() as db:
            # IMMEDIATE: the quota check and the insert hold the write lock together.
            db.execute("BEGIN IMMEDIATE")
            if quota is not None:
                used = _used_seconds(db, key)
                if used + seconds > quota:
                    raise InsufficientCreditsError(
                        f"this job needs {seconds:g} s of the key's quota; "
                        f"{max(quota - used, 0.0):g} s of {quota:g} s are left",
                        hint="use a shorter video, wait for running jobs, or raise the quota",
                    )
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM requests").fetchone()[0]
            db.execute(
                "INSERT INTO requests (request_id, key, model, intensity, webhook, status, "
                "created_at, video_asset, audio_asset, seq, seconds) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    key,
                    model,
                    intensity,
                    webhook,
                    PENDING,
                    now(),
                    video,
                    audio,
                    seq,
                    seconds,
                ),
            )
        return self.get_request(key, request_id)

    def used_seconds(self, key: str) -> float:
        """Seconds charged to ``key``: the durations of its jobs that have not failed."""
        with self._connect() as db:
            return _used_seconds(db, key)

    def get_request(self, key: str, request_id: str) -> Request | None:
        """The request if it exists and belongs to ``key``; None otherwise."""
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM requests WHERE request_id = ? AND key = ?", (request_id, key)
            ).fetchone()
        return None if row is None else _request(row)

    def list_requests(self, key: str, limit: int, offset: int) -> tuple[list[Request], int]:
        """One page of a key's requests, newest first, and how many it has in all."""
        with self._connect() as db:
            total = db.execute("SELECT COUNT(*) FROM requests WHERE key = ?", (key,)).fetchone()[0]
            rows = db.execute(
                "SELECT * FROM requests WHERE key = ? ORDER BY seq DESC LIMIT ? OFFSET ?",
                (key, limit, offset),
            ).fetchall()
        return [_request(row) for row in rows], total

    def claim_next(self, owner: str, lease_until: float) -> Request | None:
        """Claim the oldest PENDING request for ``owner``: RUNNING, leased, one more attempt.

        One statement, so two workers (in any processes) never claim the same row.
        """
        with self._connect() as db:
            row = db.execute(
                _CLAIM + "(SELECT request_id FROM requests WHERE status = ? ORDER BY seq LIMIT 1) "
                "RETURNING *",
                (RUNNING, owner, lease_until, PENDING),
            ).fetchone()
        return None if row is None else _request(row)

    def claim_request(self, request_id: str, owner: str, lease_until: float) -> Request | None:
        """Claim one named request for ``owner`` if it is PENDING; None if it is not.

        For a queue that hands out request ids (a Redis message names its job): a second
        message for the same job finds it claimed, or done, and is dropped.
        """
        with self._connect() as db:
            row = db.execute(
                _CLAIM + "? AND status = ? RETURNING *",
                (RUNNING, owner, lease_until, request_id, PENDING),
            ).fetchone()
        return None if row is None else _request(row)

    def held(self, request_id: str, owner: str) -> Request | None:
        """The request if ``owner`` holds its claim now; None otherwise."""
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM requests WHERE request_id = ? AND status = ? AND owner = ?",
                (request_id, RUNNING, owner),
            ).fetchone()
        return None if row is None else _request(row)

    def pending(self) -> list[str]:
        """The ids of the requests waiting for a worker, oldest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT request_id FROM requests WHERE status = ? ORDER BY seq", (PENDING,)
            ).fetchall()
        return [row["request_id"] for row in rows]

    def running(self) -> list[Request]:
        """The requests claimed by a worker now (or by one that died holding them)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM requests WHERE status = ? ORDER BY seq", (RUNNING,)
            ).fetchall()
        return [_request(row) for row in rows]

    def requeue(self, request_id: str, owner: str | None) -> bool:
        """Take a claim back from ``owner`` and queue the request again; False if not held.

        ``owner`` None takes back a row left RUNNING without one: a job a server of a version
        before owners were recorded was running when it stopped.
        """
        with self._connect() as db:
            # IS, not =: NULL = NULL is not true, and such a row would stay RUNNING for good.
            moved = db.execute(
                "UPDATE requests SET status = ?, phase = NULL, progress = 0, owner = NULL, "
                "lease_until = NULL WHERE request_id = ? AND status = ? AND owner IS ?",
                (PENDING, request_id, RUNNING, owner),
            ).rowcount
        return moved == 1

    def renew(self, request_id: str, owner: str, lease_until: float) -> bool:
        """Extend ``owner``'s lease on a claim; False once the claim is no longer theirs."""
        with self._connect() as db:
            kept = db.execute(
                "UPDATE requests SET lease_until = ? WHERE request_id = ? AND status = ? "
                "AND owner = ?",
                (lease_until, request_id, RUNNING, owner),
            ).rowcount
        return kept == 1

    def set_progress(
        self, request_id: str, phase: str, progress: float, owner: str | None = None
    ) -> bool:
        """Record the phase a running job is in and its overall progress (0..100).

        With ``owner``, only while that worker holds the claim; returns whether it was written.
        """
        with self._connect() as db:
            written = db.execute(
                "UPDATE requests SET phase = ?, progress = ? WHERE request_id = ?" + _HELD_BY,
                (phase, round(progress, 1), request_id, owner, owner),
            ).rowcount
        return written == 1

    def finish(self, request_id: str, output: Path, owner: str | None = None) -> bool:
        """Mark a job done, with its output video; with ``owner``, only if it holds the claim."""
        with self._connect() as db:
            done = db.execute(
                "UPDATE requests SET status = ?, progress = 100, completed_at = ?, output = ?, "
                "owner = NULL, lease_until = NULL WHERE request_id = ?" + _HELD_BY,
                (SUCCESS, now(), str(output), request_id, owner, owner),
            ).rowcount
        return done == 1

    def fail(
        self, request_id: str, code: str, name: str, message: str, owner: str | None = None
    ) -> bool:
        """Mark a job failed, with the error a client will see; ``owner`` as in :meth:`finish`."""
        with self._connect() as db:
            done = db.execute(
                "UPDATE requests SET status = ?, completed_at = ?, error_code = ?, "
                "error_name = ?, error_message = ?, owner = NULL, lease_until = NULL "
                "WHERE request_id = ?" + _HELD_BY,
                (FAILED, now(), code, name, message, request_id, owner, owner),
            ).rowcount
        return done == 1

    def output_path(self, request_id: str, attempt: int) -> Path:
        """Where one attempt of a job keeps its video: each attempt has a name of its own,
        so a rename into place never replaces another attempt's output."""
        return self.output_dir / f"{request_id}-{attempt}.mp4"

    def request(self, request_id: str) -> Request:
        """A request by id, whoever owns it (for the workers and the webhook sender)."""
        return self._by_id(request_id)

    # --- webhooks -------------------------------------------------------------------------

    def record_webhook_attempt(
        self, request_id: str, status: int | None, error: str | None
    ) -> WebhookState:
        """Count one delivery attempt; ``error`` None means it was delivered."""
        stamp = now()
        with self._lock, self._connect() as db:
            db.execute(
                "INSERT INTO webhooks (request_id) VALUES (?) ON CONFLICT DO NOTHING",
                (request_id,),
            )
            db.execute(
                "UPDATE webhooks SET attempts = attempts + 1, last_status = ?, last_error = ?, "
                "last_attempt_at = ?, delivered_at = ? WHERE request_id = ?",
                (status, error, stamp, stamp if error is None else None, request_id),
            )
        return self.webhook_state(request_id)

    def give_up_webhook(self, request_id: str) -> None:
        """Stop delivering a request's webhook (attempts spent, or refused for good)."""
        with self._lock, self._connect() as db:
            db.execute(
                "INSERT INTO webhooks (request_id) VALUES (?) ON CONFLICT DO NOTHING",
                (request_id,),
            )
            db.execute(
                "UPDATE webhooks SET gave_up_at = ? WHERE request_id = ?", (now(), request_id)
            )

    def due_webhooks(self) -> list[str]:
        """Finished requests whose webhook is neither delivered nor given up, oldest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT r.request_id FROM requests r LEFT JOIN webhooks w "
                "ON w.request_id = r.request_id WHERE r.status IN (?, ?) "
                "AND r.webhook IS NOT NULL AND w.delivered_at IS NULL AND w.gave_up_at IS NULL "
                "ORDER BY r.seq",
                (SUCCESS, FAILED),
            ).fetchall()
        return [row["request_id"] for row in rows]

    def webhook_state(self, request_id: str) -> WebhookState | None:
        """The delivery record of a request's webhook; None before the first attempt."""
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM webhooks WHERE request_id = ?", (request_id,)
            ).fetchone()
        return (
            None
            if row is None
            else WebhookState(**{f.name: row[f.name] for f in fields(WebhookState)})
        )

    def asset_path(self, asset_id: int) -> Path:
        """The media file of an asset, whoever owns it (for the workers)."""
        with self._connect() as db:
            row = db.execute("SELECT path FROM assets WHERE id = ?", (asset_id,)).fetchone()
        return Path(row["path"])

    def _by_id(self, request_id: str) -> Request:
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
        return _request(row)


# A claim, completed by the request it takes: RUNNING for an owner under a lease, progress
# from nothing, one attempt more. RETURNING * hands back the claimed row in the same statement.
_CLAIM = (
    "UPDATE requests SET status = ?, progress = 0, phase = NULL, owner = ?, "
    "lease_until = ?, attempts = attempts + 1 WHERE request_id = "
)

# Appended to an UPDATE's WHERE: the row is held by the owner given, or no owner was given.
_HELD_BY = f" AND (? IS NULL OR (status = '{RUNNING}' AND owner = ?))"


def _used_seconds(db: sqlite3.Connection, key: str) -> float:
    return db.execute(
        "SELECT COALESCE(SUM(seconds), 0) FROM requests WHERE key = ? AND status != ?",
        (key, FAILED),
    ).fetchone()[0]


def _add_missing_columns(db: sqlite3.Connection) -> None:
    for table, columns in _ADDED_COLUMNS.items():
        present = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, declaration in columns.items():
            if name not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")


def _asset(row: sqlite3.Row) -> Asset:
    return Asset(
        id=row["id"],
        key=row["key"],
        media_type=row["media_type"],
        sha256=row["sha256"],
        path=Path(row["path"]),
        created=row["created"],
        duration=row["duration"],
    )


def _request(row: sqlite3.Row) -> Request:
    values = {f.name: row[f.name] for f in fields(Request)}
    values["output"] = None if row["output"] is None else Path(row["output"])
    return Request(**values)
