"""Webhook delivery and URL assets of the REST shim, against receivers on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import stat
import threading
import time

import pytest
from clips import gray_video

pytest.importorskip("fastapi", reason="the REST shim needs the server extra (fastapi)")
pytest.importorskip("uvicorn", reason="the REST shim needs the server extra (uvicorn)")
httpx = pytest.importorskip("httpx", reason="the shim's tests talk to it with httpx")

import uvicorn  # noqa: E402
from serving import ended, upload, wait_for  # noqa: E402

from lipsync.demo import make_demo_inputs  # noqa: E402
from lipsync.errors import InvalidOptionError  # noqa: E402
from lipsync.server.app import BASE_PATH, ServerSettings, create_app  # noqa: E402
from lipsync.server.jobs import JobSettings  # noqa: E402
from lipsync.server.store import Store  # noqa: E402
from lipsync.server.webhooks import (  # noqa: E402
    SECRET_ENV,
    Webhook,
    WebhookSender,
    WebhookSettings,
    load_secret,
    parse_webhook,
    sign,
    target_url,
)

KEY = "key-hooks"
SECRET = "test-secret"
BASE_DELAY = 0.3  # seconds before the second attempt (0.6 before the third)
# A 1 s, 128 px demo job takes a few seconds on 2 cores; leave room for a slow CI machine.
JOB_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    """(base URL, app) of a running shim: one worker, 5 MB limit, fast webhook retries."""
    settings = ServerSettings(
        max_upload_bytes=5 << 20,
        fetch_timeout=10.0,
        jobs=JobSettings(face_workers=1, poll_interval=0.2),
        webhooks=WebhookSettings(attempts=3, base_delay=BASE_DELAY, timeout=5.0),
        allow_private_urls=True,  # the receiver is on 127.0.0.1
    )
    app = create_app(
        tmp_path_factory.mktemp("shim"), keys=[KEY], settings=settings, webhook_secret=SECRET
    )

    # Bind first, so the port is ours before uvicorn starts.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    deadline = time.monotonic() + 20
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}{BASE_PATH}", app

    uv.should_exit = True
    thread.join(30)
    sock.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_demo_inputs(tmp_path_factory.mktemp("demo"), seconds=1.0, size=128)


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"x-api-key": KEY}, timeout=60)


def _refused(response: httpx.Response, http_status: int) -> dict:
    assert response.status_code == http_status, response.text
    body = response.json()
    assert body["status"] == "failed" and body["message"]
    return body


def _signed(call: dict) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), call["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(call["headers"].get("X-Lipsync-Signature", ""), expected)


# --- end to end: URL assets dubbed, webhook retried and signed ------------------------------


def test_url_assets_dub_and_the_webhook_arrives_after_a_retry(shim, receiver, inputs):
    base, app = shim
    receiver.files["/media/talk.mp4"] = (inputs.video.read_bytes(), "video/mp4")
    # No extension in the URL: the type comes from Content-Type.
    receiver.files["/media/voice"] = (inputs.audio.read_bytes(), "audio/x-wav")
    receiver.script["/hook-a"] = [500]
    payload = {
        "model": "e1",
        "assets": [
            {"type": "video", "url": receiver.url + "/media/talk.mp4"},
            {"type": "audio", "url": receiver.url + "/media/voice"},
        ],
        "webhook": {
            "url": receiver.url + "/hook-a?source=shim",
            "headers": {"X-Token": "abc"},
            "params": {"job": 42},
        },
    }
    with _client(base) as client:
        response = client.post("/visualdub", json=payload)
        assert response.status_code == 201, response.text
        request_id = response.json()["data"]["request_id"]
        status = wait_for(client, request_id, ended, JOB_TIMEOUT)
        calls = receiver.wait_posts("/hook-a", 2, timeout=30)
        listed = client.get("/list_assets").json()["data"]

    assert status["status_code"] == "success", status
    ids = {a["type"]: a["asset_id"] for a in response.json()["data"]["assets"]}
    assert {"asset_id": ids["video"], "media_type": "video"} in listed
    assert {"asset_id": ids["audio"], "media_type": "audio"} in listed

    first, second = calls
    assert second["time"] - first["time"] >= BASE_DELAY * 0.9, "backoff before the retry"
    assert first["body"] == second["body"]
    for call in calls:
        assert call["query"] == {"source": "shim", "job": "42"}
        assert call["headers"]["X-Token"] == "abc"
        assert call["headers"]["Content-Type"] == "application/json"
        assert _signed(call)
    body = json.loads(second["body"])
    assert body == {**status, "event": "completed"}

    state = app.state.webhooks.store.webhook_state(request_id)
    assert state.attempts == 2 and state.last_status == 200 and state.last_error is None
    assert state.delivered_at is not None
    time.sleep(BASE_DELAY * 3)
    assert len(receiver.posts("/hook-a")) == 2, "no attempt after the delivery"


def test_string_webhook_reports_a_failed_job(shim, receiver, inputs, tmp_path):
    base, _app = shim
    video = tmp_path / "wall.mp4"
    gray_video(video)
    with _client(base) as client:
        response = upload(client, video, inputs.audio, webhook=receiver.url + "/hook-b")
        assert response.status_code == 201, response.text
        status = wait_for(client, response.json()["data"]["request_id"], ended, JOB_TIMEOUT)
    (call,) = receiver.wait_posts("/hook-b", 1, timeout=30)

    assert status["status_code"] == "failed"
    assert _signed(call) and call["query"] == {}
    body = json.loads(call["body"])
    assert body["event"] == "failed"
    assert body["error"]["error_code"] == "ERR_004"
    assert body == {**status, "event": "failed"}


# --- URL assets refused at submission -------------------------------------------------------


def test_text_renamed_mp4_at_a_url_is_invalid_format(shim, receiver):
    base, _app = shim
    receiver.files["/fake.mp4"] = (b"only words, no video\n" * 50, "video/mp4")
    payload = {
        "model": "e1",
        "assets": [{"type": "video", "url": receiver.url + "/fake.mp4"}],
    }
    with _client(base) as client:
        before = client.get("/list_assets").json()["data"]
        body = _refused(client.post("/visualdub", json=payload), 400)
        after = client.get("/list_assets").json()["data"]
    assert body["data"]["error_code"] == "ERR_008"
    assert "/fake.mp4" in body["data"]["message"], "the message names the URL"
    assert after == before


def test_url_asset_over_the_size_limit_is_refused(shim, receiver):
    base, _app = shim
    receiver.files["/big.mp4"] = (bytes(6 << 20), "video/mp4")
    payload = {"model": "e1", "assets": [{"type": "video", "url": receiver.url + "/big.mp4"}]}
    with _client(base) as client:
        body = _refused(client.post("/visualdub", json=payload), 413)
    assert body["data"]["error_code"] == "ERR_009"


@pytest.mark.parametrize(
    "url, words",
    [
        ("file:///etc/passwd", "http:// or https://"),
        ("ftp://127.0.0.1/v.mp4", "http:// or https://"),
        ("http:///no-host.mp4", "http:// or https://"),
        ("missing", "could not download"),  # a closed port on 127.0.0.1 (filled in below)
    ],
)
def test_bad_asset_urls_are_refused(shim, url, words):
    base, _app = shim
    if url == "missing":
        url = f"http://127.0.0.1:{_closed_port()}/v.mp4"
    payload = {"model": "e1", "assets": [{"type": "video", "url": url}]}
    with _client(base) as client:
        body = _refused(client.post("/visualdub", json=payload), 400)
    assert body["status_code"] == "invalid_request"
    assert words in body["message"]


@pytest.mark.parametrize(
    "webhook",
    [
        "ftp://127.0.0.1/hook",
        {"headers": {}},
        {"url": "http://127.0.0.1/hook", "headers": {"X-A": "1\r\nX-B: 2"}},
        {"url": "http://127.0.0.1/hook", "params": ["a"]},
    ],
)
def test_bad_webhooks_are_refused(shim, webhook):
    base, _app = shim
    with _client(base) as client:
        body = _refused(client.post("/visualdub", json={"model": "e1", "webhook": webhook}), 400)
    assert body["status_code"] == "invalid_request"
    assert "webhook" in body["message"]


# --- the sender on its own ------------------------------------------------------------------


@pytest.mark.parametrize("script, attempts", [([500, 502, 503], 3), ([404], 1)])
def test_undeliverable_webhook_gives_up_and_leaves_the_job(tmp_path, receiver, script, attempts):
    store = Store(tmp_path)
    path = f"/give-up-{attempts}"
    receiver.script[path] = list(script)
    hook = json.dumps({"url": receiver.url + path, "headers": {}, "params": {}})
    job = store.create_request("k", "e1", 2, 1, 2, hook)
    store.finish(job.request_id, tmp_path / "out.mp4")

    settings = WebhookSettings(attempts=3, base_delay=0.05)
    sender = WebhookSender(store, SECRET, settings, allow_private=True)
    sender.request_done(job.request_id)
    assert sender.drain(timeout=10)
    sender.stop()

    state = store.webhook_state(job.request_id)
    assert state.attempts == attempts == len(receiver.posts(path))
    assert state.last_status == script[-1] and state.delivered_at is None
    assert state.last_error == f"HTTP {script[-1]}"
    assert store.request(job.request_id).status == "success"


def test_sign_matches_hmac_sha256():
    body = b'{"event":"completed"}'
    digest = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign(body, "s3cret") == "sha256=" + digest
    assert sign(body + b" ", "s3cret") != sign(body, "s3cret")


def test_target_url_adds_params_to_the_query():
    hook = Webhook("https://h.example/cb?a=1", {}, {"b": "x y", "c": "2"})
    assert target_url(hook) == "https://h.example/cb?a=1&b=x+y&c=2"
    assert target_url(parse_webhook("http://h.example/cb")) == "http://h.example/cb"


def test_parse_webhook_accepts_both_documented_forms():
    plain = parse_webhook("https://h.example/cb")
    assert plain == Webhook("https://h.example/cb", {}, {})
    text = '{"url": "https://h.example/cb", "headers": {"A": "1"}, "params": {"n": 3}}'
    assert parse_webhook(text) == Webhook("https://h.example/cb", {"A": "1"}, {"n": "3"})
    with pytest.raises(InvalidOptionError):
        parse_webhook({"url": "javascript:alert(1)"})


def test_secret_is_made_once_per_store_unless_given(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    made = load_secret(tmp_path)
    assert len(made) == 64 and load_secret(tmp_path) == made
    assert stat.S_IMODE((tmp_path / "webhook.secret").stat().st_mode) == 0o600
    (tmp_path / "other").mkdir()
    assert load_secret(tmp_path / "other") != made, "each store has its own"

    monkeypatch.setenv(SECRET_ENV, "from-env")
    assert load_secret(tmp_path) == "from-env"
    assert load_secret(tmp_path, "given") == "given"


# --- helpers ----------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
