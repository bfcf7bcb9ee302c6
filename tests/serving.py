"""The shim as a separate process (``python -m lipsync serve``) for the tests that kill,
restart or fuzz it, remote workers and a Redis server beside it, and a loopback receiver
for its webhooks."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from lipsync.server.app import BASE_PATH

STARTUP_TIMEOUT = 60.0  # seconds for the server to answer (imports on a slow CI machine)


class ServerProcess:
    """One ``serve`` process on a free loopback port, its store in ``home``."""

    def __init__(self, home: Path, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.home = home
        self.env = {**os.environ, "LIPSYNC_HOME": str(home), **env}
        self.args = args
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{BASE_PATH}"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> ServerProcess:
        """Start the server (on ``port``, default a free one) and wait until it answers."""
        self.port = port or _free_port()
        self.starts += 1
        log = open(self.home / f"server-{self.starts}.log", "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "lipsync", "serve", "--port", str(self.port)]
        # A session of its own: the test can end the server and all it started.
        self.process = subprocess.Popen(
            [*command, *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the server exited ({self.process.returncode}):\n{self.log()}"
                )
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/openapi.json", timeout=2).is_success:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server did not answer in {STARTUP_TIMEOUT} s:\n{self.log()}")

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"x-api-key": key}, timeout=60)

    def workers(self) -> list[int]:
        """Every process the server started (job workers, their face workers, helpers)."""
        return _descendants(self.process.pid) if self.process is not None else []

    def crash(self) -> list[int]:
        """SIGKILL the server and everything it started, as a power cut would; their pids."""
        victims = [self.process.pid, *self.workers()]
        for pid in victims:
            _kill(pid)
        self.process.wait(10)
        return victims

    def kill_server_only(self) -> list[int]:
        """SIGKILL the server process alone; the pids of the processes it leaves behind."""
        left = self.workers()
        _kill(self.process.pid)
        self.process.wait(10)
        return left

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a graceful stop) and wait; the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log(self) -> str:
        return (self.home / f"server-{self.starts}.log").read_text(errors="replace")[-4000:]


class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port, keeping nothing on disk."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        log = open(self.folder / "redis.log", "wb")  # noqa: SIM115
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port)]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.folder)]
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.folder / "redis.log").read_text()
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.1)
        raise AssertionError("redis-server did not answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class WorkerProcess:
    """One ``python -m lipsync worker`` process, in a session of its own (for a clean kill)."""

    def __init__(self, folder: Path, env: dict[str, str], args: tuple[str, ...]) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        # Its own home: nothing of the shim's store is within reach of the worker.
        self.env = {**os.environ, "LIPSYNC_HOME": str(folder / "home"), **env}
        self.args = args
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def launch(self) -> WorkerProcess:
        log = open(self.folder / "worker.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lipsync", "-v", "worker", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        while " ready: jobs from " not in self.log():
            assert self.process.poll() is None, f"the worker exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"the worker did not start:\n{self.log()}"
            time.sleep(0.2)
        return self

    def done(self) -> list[str]:
        """Request ids this worker has finished, in order, from its log."""
        return re.findall(r"request ([0-9a-f]{32}) done:", self.log())

    def kill(self) -> None:
        """SIGKILL the worker and the face processes it started, as a power cut would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        path = self.folder / "worker.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Receiver:
    """An HTTP server on 127.0.0.1: records requests, answers POSTs with scripted statuses and
    GETs with the files it is given (404 for any other)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []  # each request: path, query, headers, time, a POST's body
        self.script: dict[str, list[int]] = {}  # path -> statuses to answer, in order
        self.files: dict[str, tuple[bytes, str]] = {}  # path -> (bytes, content type)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = receiver.record(self.path, self.headers, body=body)
                with receiver.lock:
                    statuses = receiver.script.get(path, [])
                    code = statuses.pop(0) if statuses else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                found = receiver.files.get(receiver.record(self.path, self.headers))
                if found is None:
                    self.send_error(404)
                    return
                data, content_type = found
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def record(self, target: str, headers, **extra) -> str:
        """Note one request; its path."""
        parts = urllib.parse.urlsplit(target)
        call = {
            "path": parts.path,
            "query": dict(urllib.parse.parse_qsl(parts.query)),
            "headers": dict(headers),
            "time": time.monotonic(),
            **extra,
        }
        with self.lock:
            self.calls.append(call)
        return parts.path

    def posts(self, path: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if c["path"] == path and "body" in c]

    def wait_posts(self, path: str, count: int, timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.posts(path)) < count:
            assert time.monotonic() < deadline, f"{count} POST(s) to {path} did not arrive"
            time.sleep(0.05)
        return self.posts(path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the shim hangs up on an oversized file on purpose; no traceback for that


def wait_for(client: httpx.Client, request_id: str, done, timeout: float) -> dict:
    """Poll get_status until ``done(data)``; the last status data."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/get_status", params={"request_id": request_id})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        if done(data):
            return data
        time.sleep(0.1)
    raise AssertionError(f"request {request_id}: not reached in {timeout} s (last: {data})")


def ended(data: dict) -> bool:
    """Whether a request's status data is final (the usual ``done`` of :func:`wait_for`)."""
    return data["status_code"] in ("success", "failed")


def upload(client: httpx.Client, video: Path, audio: Path, **fields) -> httpx.Response:
    """POST /visualdub with two files, as an e1 job with ``fields`` (webhook, options...)."""
    with open(video, "rb") as v, open(audio, "rb") as a:
        files = {"video": (video.name, v, "video/mp4"), "audio": (audio.name, a, "audio/wav")}
        return client.post("/visualdub", data={"model": "e1", **fields}, files=files)


def submit(client: httpx.Client, inputs, **fields) -> str:
    """Upload demo inputs (``.video``, ``.audio``) as a job that must be accepted; its id."""
    response = upload(client, inputs.video, inputs.audio, **fields)
    assert response.status_code == 201, response.text
    return response.json()["data"]["request_id"]


def request_rows(home: Path) -> dict[str, sqlite3.Row]:
    """The store's requests table, read directly: request id to row (status, owner, attempts)."""
    # The server writes meanwhile: wait for its lock as long as the store itself does.
    with sqlite3.connect(home / "server" / "lipsync.db", timeout=30) as db:
        db.row_factory = sqlite3.Row
        return {r["request_id"]: r for r in db.execute("SELECT * FROM requests").fetchall()}


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
