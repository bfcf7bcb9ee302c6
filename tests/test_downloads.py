"""Resumable, hash-checked downloads and `models pull`, against a server on 127.0.0.1 only."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from lipsync import cli, downloads
from lipsync.downloads import DOWNLOADS_DIR, download, pull_model
from lipsync.errors import (
    DataCorruptedError,
    InternalError,
    InvalidOptionError,
    ModelNotInstalledError,
)
from lipsync.models import list_models, load_manifest, models_home, require_model

pytest.importorskip("onnx")
from tiny_onnx import tiny_model  # noqa: E402

# 288 kB of bytes that differ from position to position, so a splice at the wrong offset shows.
PAYLOAD = hashlib.sha256(b"seed").digest() * 1000 + bytes(range(256)) * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
_RANGE = re.compile(r"bytes=(\d+)-")


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` unless ``server.ranges`` is False."""

    def do_GET(self) -> None:
        server = self.server
        asked = self.headers.get("Range")
        server.log.append((self.path, asked))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return

        match = _RANGE.fullmatch(asked or "")
        start = int(match.group(1)) if match and server.ranges else 0
        if start >= len(body) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return

        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        # cut_at: drop the connection after that many body bytes, as a failing network does.
        end = len(body) if server.cut_at is None else start + server.cut_at
        self.wfile.write(body[start:end])

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def server(monkeypatch):
    """A loopback HTTP server on a free port, stopped at the end of the test."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")

    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = {"/file.bin": PAYLOAD}
    httpd.ranges = True
    httpd.cut_at = None
    httpd.log = []
    httpd.url = f"http://127.0.0.1:{httpd.server_port}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "home"))


def _recorder():
    calls: list[tuple[int, int | None]] = []
    return calls, lambda done, total: calls.append((done, total))


def test_a_full_download_is_checked_and_moved_into_place(server, tmp_path):
    target = tmp_path / "sub" / "file.bin"
    calls, progress = _recorder()

    result = download(
        f"{server.url}/file.bin", target, sha256=PAYLOAD_SHA, progress=progress, chunk=65536
    )

    assert result == target and target.read_bytes() == PAYLOAD
    assert not target.with_suffix(".bin.part").exists()
    assert server.log == [("/file.bin", None)]
    assert calls[0] == (0, len(PAYLOAD)) and calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert len(calls) == 1 + -(-len(PAYLOAD) // 65536)


def test_a_partial_download_resumes_with_a_range_request(server, tmp_path):
    target = tmp_path / "file.bin"
    kept = 123_457
    target.with_suffix(".bin.part").write_bytes(PAYLOAD[:kept])
    calls, progress = _recorder()

    download(f"{server.url}/file.bin", target, sha256=PAYLOAD_SHA, progress=progress)

    assert server.log == [("/file.bin", f"bytes={kept}-")]
    assert target.read_bytes() == PAYLOAD
    assert calls[0] == (kept, len(PAYLOAD)) and calls[-1][0] == len(PAYLOAD)


def test_a_server_that_ignores_range_gets_a_fresh_download(server, tmp_path):
    server.ranges = False
    target = tmp_path / "file.bin"
    # Wrong bytes in the .part: kept, they would corrupt the file; a fresh start drops them.
    target.with_suffix(".bin.part").write_bytes(b"x" * 5000)

    download(f"{server.url}/file.bin", target, sha256=PAYLOAD_SHA)

    # Its 200 answer is the whole file: read from the start, without asking a second time.
    assert server.log == [("/file.bin", "bytes=5000-")]
    assert target.read_bytes() == PAYLOAD


def test_a_part_as_long_as_the_file_starts_over_after_416(server, tmp_path):
    target = tmp_path / "file.bin"
    target.with_suffix(".bin.part").write_bytes(b"y" * (len(PAYLOAD) + 10))

    download(f"{server.url}/file.bin", target)

    assert [asked for _, asked in server.log] == [f"bytes={len(PAYLOAD) + 10}-", None]
    assert target.read_bytes() == PAYLOAD


def test_a_cut_transfer_keeps_its_part_and_the_next_call_finishes_it(server, tmp_path):
    target = tmp_path / "file.bin"
    part = target.with_suffix(".bin.part")
    server.cut_at = 100_000

    cut = f"stopped at 100000 of {len(PAYLOAD)} bytes"
    with pytest.raises(InternalError, match=cut) as caught:
        download(f"{server.url}/file.bin", target, sha256=PAYLOAD_SHA, chunk=4096)
    assert "resume" in str(caught.value)
    assert part.read_bytes() == PAYLOAD[:100_000] and not target.exists()

    server.cut_at = None
    download(f"{server.url}/file.bin", target, sha256=PAYLOAD_SHA)

    assert server.log[-1] == ("/file.bin", "bytes=100000-")
    assert target.read_bytes() == PAYLOAD and not part.exists()


def test_a_corrupt_download_is_deleted(server, tmp_path):
    target = tmp_path / "file.bin"
    wrong = hashlib.sha256(b"another file").hexdigest()

    with pytest.raises(DataCorruptedError, match=f"expected {wrong}"):
        download(f"{server.url}/file.bin", target, sha256=wrong.upper())

    assert list(tmp_path.iterdir()) == []


def test_failures_outside_lipsync_raise_typed_errors(server, tmp_path):
    target = tmp_path / "file.bin"

    with pytest.raises(InternalError, match="HTTP 404") as caught:
        download(f"{server.url}/absent.bin", target)
    assert caught.value.hint is None  # a refusal is not worth retrying

    with socket.socket() as probe:  # a port that nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(InternalError, match="cannot connect"):
        download(f"http://127.0.0.1:{port}/file.bin", target, timeout=5)
    with pytest.raises(InvalidOptionError, match="http"):
        download("file:///etc/hostname", target)
    with pytest.raises(InvalidOptionError, match="64 hex"):
        download(f"{server.url}/file.bin", target, sha256="abc")
    assert list(tmp_path.iterdir()) == []


def test_pull_installs_a_verified_model_from_a_url(server, tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx").read_bytes()
    server.files["/tiny.onnx"] = model

    server.cut_at = len(model) // 2
    with pytest.raises(InternalError, match="resume"):
        pull_model("mine", url=f"{server.url}/tiny.onnx")
    assert [p.stat().st_size for p in models_home().rglob("*.part")] == [len(model) // 2]

    server.cut_at = None
    status = pull_model("mine", url=f"{server.url}/tiny.onnx")

    assert server.log[-1] == ("/tiny.onnx", f"bytes={len(model) // 2}-")
    assert status.installed and status.verified and status.origin == "user"
    assert status.path.read_bytes() == model
    assert status.sha256 == hashlib.sha256(model).hexdigest()
    assert require_model("mine").path == status.path
    assert not (models_home() / DOWNLOADS_DIR).exists()


def test_pull_uses_the_manifest_source_and_its_published_hash(server, tmp_path, monkeypatch):
    model = tiny_model(tmp_path / "tiny.onnx").read_bytes()
    server.files["/e2.onnx"] = model
    manifest = load_manifest()
    published = dataclasses.replace(
        manifest["e2"], source=f"{server.url}/e2.onnx", sha256=hashlib.sha256(model).hexdigest()
    )
    monkeypatch.setattr(downloads, "load_manifest", lambda: {**manifest, "e2": published})

    status = pull_model("e2")

    assert status.verified and status.origin == "manifest"
    assert status.path == models_home() / manifest["e2"].file
    assert {s.name: s.verified for s in list_models()}["e2"]

    # The same source serving another file: the published hash rejects it, nothing changes.
    server.files["/e2.onnx"] = model[:-1] + b"!"
    status.path.unlink()
    with pytest.raises(DataCorruptedError):
        pull_model("e2")
    assert not status.path.exists()
    assert list((models_home() / DOWNLOADS_DIR).rglob("*")) == []


def test_pull_without_any_download_says_how_to_import():
    with pytest.raises(ModelNotInstalledError) as caught:
        pull_model("e2")
    assert "python -m lipsync models import PATH --name e2" in str(caught.value)
    assert "github.com/Rudrabha/Wav2Lip" in str(caught.value)

    with pytest.raises(InvalidOptionError, match="--url"):
        pull_model("nobody-knows")


def test_cli_pull_exit_codes(server, tmp_path, capsys):
    server.files["/tiny.onnx"] = tiny_model(tmp_path / "tiny.onnx").read_bytes()
    server.files["/junk.onnx"] = b"not a model"

    url = f"{server.url}/tiny.onnx"
    assert cli.main(["models", "pull", "mine", "--url", url, "--json"]) == 0
    pulled = json.loads(capsys.readouterr().out)
    assert pulled["name"] == "mine" and pulled["verified"]

    assert cli.main(["models", "pull", "other", "--url", url, "-q"]) == 0
    assert capsys.readouterr().out.startswith("installed other: ")

    assert cli.main(["models", "pull", "junk", "--url", f"{server.url}/junk.onnx", "-q"]) == 3
    assert "not a valid ONNX model" in capsys.readouterr().err
    assert cli.main(["models", "pull", "e2", "-q"]) == 1
    assert "models import PATH --name e2" in capsys.readouterr().err
    assert cli.main(["models", "pull", "mine", "--url", "ftp://x/y.onnx", "-q"]) == 2
    assert not any(s.name in ("junk", "e2") and s.installed for s in list_models())


def test_cli_pull_shows_a_progress_bar(server, tmp_path, capfd):
    model = tiny_model(tmp_path / "tiny.onnx").read_bytes()
    server.files["/tiny.onnx"] = model

    assert cli.main(["models", "pull", "mine", "--url", f"{server.url}/tiny.onnx"]) == 0

    # The CLI draws on the terminal's descriptor 2, so the bar is read there.
    shown = capfd.readouterr()
    assert shown.out.startswith("installed mine: ")
    assert "100%" in shown.err and f"{len(model)}/{len(model)}" in shown.err
