"""The REST shim, driven over HTTP: a real uvicorn server on 127.0.0.1, started here."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from clips import gray_video

pytest.importorskip("fastapi", reason="the REST shim needs the server extra (fastapi)")
pytest.importorskip("uvicorn", reason="the REST shim needs the server extra (uvicorn)")
httpx = pytest.importorskip("httpx", reason="the shim's tests talk to it with httpx")

import uvicorn  # noqa: E402
from serving import upload  # noqa: E402

from lipsync.demo import make_demo_inputs  # noqa: E402
from lipsync.server.app import BASE_PATH, ServerSettings, create_app  # noqa: E402
from lipsync.server.jobs import JobSettings  # noqa: E402

KEY_A, KEY_B = "key-alpha", "key-beta"
# A 2 s demo job takes about 10 s on 2 cores; leave room for a slow CI machine.
JOB_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of a running shim with two keys, one job worker and a 5 MB upload limit."""
    # The webhooks of these tests point at 127.0.0.1, which a default server refuses.
    settings = ServerSettings(
        max_upload_bytes=5 << 20,
        jobs=JobSettings(face_workers=1, poll_interval=0.2),
        allow_private_urls=True,
    )
    app = create_app(tmp_path_factory.mktemp("shim"), keys=[KEY_A, KEY_B], settings=settings)

    # Bind first, so the port is ours before uvicorn starts (no race for a free port).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    deadline = time.monotonic() + 20
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}{BASE_PATH}"

    uv.should_exit = True
    thread.join(30)
    sock.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_inputs(tmp_path_factory.mktemp("demo"), seconds=2.0, size=256)


def _client(url: str, key: str | None = KEY_A) -> httpx.Client:
    headers = {} if key is None else {"x-api-key": key}
    return httpx.Client(base_url=url, headers=headers, timeout=60)


def _wait(client: httpx.Client, request_id: str) -> dict:
    """Poll get_status until the job ends; returns the last status data (phases seen too)."""
    phases = set()
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        response = client.get("/get_status", params={"request_id": request_id})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        phases.add(data["phase"])
        if data["status_code"] in ("success", "failed"):
            data["phases_seen"] = phases
            return data
        time.sleep(0.2)
    raise AssertionError(f"request {request_id} did not finish in {JOB_TIMEOUT} s")


def _assert_failed(response: httpx.Response, http_status: int) -> dict:
    assert response.status_code == http_status, response.text
    body = response.json()
    assert body["status"] == "failed"
    assert isinstance(body["message"], str) and body["message"]
    return body


@pytest.fixture(scope="module")
def uploaded_job(server, demo):
    """A job submitted by multipart upload, run to the end: (response body, final status)."""
    with _client(server) as client:
        response = upload(client, demo.video, demo.audio, options='{"intensity": 3}')
        assert response.status_code == 201, response.text
        body = response.json()
        return body, _wait(client, body["data"]["request_id"])


# --- auth ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_missing_or_bad_key_is_unauthorized(server, key):
    with _client(server, key) as client:
        for path in ("/list_assets", "/list_requests", "/get_status?request_id=x"):
            body = _assert_failed(client.get(path), 401)
            assert body["status_code"] == "unauthorized"
        _assert_failed(client.post("/visualdub", json={"model": "e1"}), 401)


# --- the job life cycle -------------------------------------------------------------------


def test_multipart_upload_runs_to_success(uploaded_job):
    body, status = uploaded_job
    assert body["status"] == "success" and body["message"] == "Job Created"
    data = body["data"]
    assert len(data["request_id"]) == 32 and int(data["request_id"], 16) >= 0
    assert [a["type"] for a in data["assets"]] == ["video", "audio"]
    assert all(isinstance(a["asset_id"], int) for a in data["assets"])
    assert data["credit_details"] == {"credits_deducted": 0}

    assert status["status"] == "Success" and status["status_code"] == "success", status
    assert status["assets"] == {
        "video": data["assets"][0]["asset_id"],
        "audio": data["assets"][1]["asset_id"],
    }
    assert status["progress"] == 100
    assert status["phase"] == "visual_dubbing", "the last phase reported"


def test_get_file_returns_the_mp4(server, uploaded_job):
    request_id = uploaded_job[0]["data"]["request_id"]
    with _client(server) as client:
        response = client.get("/get_file", params={"request_id": request_id})
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["content-disposition"] == 'attachment; filename="output.mp4"'
    assert response.content[4:8] == b"ftyp"
    assert len(response.content) > 10_000

    with _client(server) as client:
        part = client.get(
            "/get_file", params={"request_id": request_id}, headers={"range": "bytes=4-7"}
        )
    assert part.status_code == 206
    assert part.content == b"ftyp"


def test_json_asset_ids_reuse_the_uploads(server, uploaded_job):
    assets = {a["type"]: a["asset_id"] for a in uploaded_job[0]["data"]["assets"]}
    payload = {
        "model": "e1",
        "assets": [
            {"type": "video", "asset_id": assets["video"]},
            {"type": "audio", "asset_id": assets["audio"]},
        ],
        "options": {"intensity": 1},
        "webhook": {"url": "http://127.0.0.1:9/hook", "headers": {}, "params": {}},
    }
    with _client(server) as client:
        response = client.post("/visualdub", json=payload)
        assert response.status_code == 201, response.text
        data = response.json()["data"]
        assert {a["type"]: a["asset_id"] for a in data["assets"]} == assets

        # Before the worker is done, get_file answers with the documented in-progress body.
        early = client.get("/get_file", params={"request_id": data["request_id"]})
        if early.headers["content-type"].startswith("application/json"):
            assert early.json()["data"]["status"] == "in_progress"
            assert early.json()["data"]["status_code"] == 102

        status = _wait(client, data["request_id"])
        assert status["status_code"] == "success", status


def test_identical_upload_is_stored_once(server, demo, uploaded_job):
    first = {a["type"]: a["asset_id"] for a in uploaded_job[0]["data"]["assets"]}
    with _client(server) as client:
        # Asset ids in form fields, mixed with a fresh upload of the same voice.
        with open(demo.audio, "rb") as a:
            response = client.post(
                "/visualdub",
                data={"model": "e1", "video_asset_id": str(first["video"])},
                files={"audio": (demo.audio.name, a, "audio/wav")},
            )
        assert response.status_code == 201, response.text
        again = {a["type"]: a["asset_id"] for a in response.json()["data"]["assets"]}
        assert again == first


# --- listings ------------------------------------------------------------------------------


def test_list_and_get_assets(server, uploaded_job):
    ids = {a["type"]: a["asset_id"] for a in uploaded_job[0]["data"]["assets"]}
    with _client(server) as client:
        listed = client.get("/list_assets").json()
        fetched = client.get("/get_asset", params={"asset_id": ids["audio"]}).json()
        missing = client.get("/get_asset", params={"asset_id": 10_000})
    assert listed["status"] == "success" and listed["message"] == "Assets listed"
    assert {"asset_id": ids["video"], "media_type": "video"} in listed["data"]
    assert {"asset_id": ids["audio"], "media_type": "audio"} in listed["data"]
    assert fetched == {
        "status": "success",
        "message": "Asset Fetched",
        "data": {"asset_id": ids["audio"], "media_type": "audio"},
    }
    assert _assert_failed(missing, 404)["message"] == "Asset not found"


def test_list_requests_pages(server, uploaded_job, tmp_path):
    with _client(server, KEY_B) as client:
        # Key B's own three requests (reusing no asset of key A): upload once, then by id.
        first = upload(client, *_small_inputs(tmp_path))
        assert first.status_code == 201, first.text
        ids = {a["type"]: a["asset_id"] for a in first.json()["data"]["assets"]}
        made = [first.json()["data"]["request_id"]]
        for _ in range(2):
            response = client.post(
                "/visualdub",
                data={
                    "model": "e1",
                    "video_asset_id": ids["video"],
                    "audio_asset_id": ids["audio"],
                },
            )
            assert response.status_code == 201, response.text
            made.append(response.json()["data"]["request_id"])

        # One worker, and the first job takes a second or more: the last is still queued.
        waiting = client.get("/get_file", params={"request_id": made[-1]})
        assert waiting.status_code == 200
        assert waiting.json() == {
            "status": "success",
            "data": {
                "request_id": made[-1],
                "status": "in_progress",
                "status_code": 102,
                "message": "Job is still processing. Please try again later.",
            },
        }

        pages = [
            client.get("/list_requests", params={"limit": 2, "page_no": n}).json() for n in range(3)
        ]
        everything = client.get("/list_requests").json()
        bad = client.get("/list_requests", params={"limit": 0})

    assert [p["total_requests"] for p in pages] == [3, 3, 3]
    assert [len(p["data"]) for p in pages] == [2, 1, 0]
    assert [p["end_of_records"] for p in pages] == [False, True, True]
    listed = [row["request_id"] for p in pages for row in p["data"]]
    assert listed == made[::-1], "newest first, each request once"
    assert everything["message"] == "Requests listed" and everything["end_of_records"] is True
    row = everything["data"][0]
    assert set(row) == {"request_id", "status", "status_code", "created_at", "completed_at"}
    assert len(row["created_at"]) == 19 and row["created_at"][10] == "T"
    assert _assert_failed(bad, 400)["status_code"] == "invalid_request"


def test_keys_are_isolated(server, uploaded_job):
    request_id = uploaded_job[0]["data"]["request_id"]
    video_id = uploaded_job[0]["data"]["assets"][0]["asset_id"]
    with _client(server, KEY_B) as client:
        for path, params in (
            ("/get_status", {"request_id": request_id}),
            ("/get_file", {"request_id": request_id}),
            ("/get_asset", {"asset_id": video_id}),
        ):
            body = _assert_failed(client.get(path, params=params), 404)
            assert body["status_code"] == "not_found"
            assert "data" not in body
        assert video_id not in [a["asset_id"] for a in client.get("/list_assets").json()["data"]]
        assert request_id not in [
            r["request_id"]
            for r in client.get("/list_requests", params={"limit": 100}).json()["data"]
        ]
        borrowed = client.post(
            "/visualdub", json={"model": "e1", "assets": [{"type": "video", "asset_id": video_id}]}
        )
        _assert_failed(borrowed, 404)


# --- refusals at submission ---------------------------------------------------------------


def test_text_uploaded_as_mp3_is_invalid_format(server, demo, uploaded_job, tmp_path):
    fake = tmp_path / "voice.mp3"
    fake.write_text("this is not audio, only words\n" * 20)
    with _client(server) as client:
        before = client.get("/list_assets").json()["data"]
        body = _assert_failed(upload(client, demo.video, fake), 400)
        after = client.get("/list_assets").json()["data"]
    assert body["data"]["error_code"] == "ERR_008"
    assert body["data"]["error_name"] == "INVALID_FORMAT"
    assert "voice.mp3" in body["data"]["message"]
    assert body["message"] == body["data"]["message"]
    assert after == before, "a refused upload leaves no asset (the video was stored already)"


def test_upload_over_the_size_limit_is_refused(server, demo, tmp_path):
    big = tmp_path / "big.wav"
    big.write_bytes(b"RIFF\0\0\0\0WAVE" + bytes(6 << 20))
    with _client(server) as client:
        body = _assert_failed(upload(client, demo.video, big), 413)
    assert body["data"]["error_code"] == "ERR_009"
    assert "5242880 bytes" in body["message"]


@pytest.mark.parametrize("chunked", [False, True])
def test_a_file_part_past_the_limit_is_refused_while_it_streams(server, chunked):
    # 5 MB files, so a body may carry 11 MB; this one's single file part is 64 MB. Declared,
    # its length is refused unread; sent chunked, the part is refused once 5 MB have come.
    def body():
        yield b'--b\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\n\r\n'
        for _ in range(64):
            yield bytes(1 << 20)
        yield b"\r\n--b--\r\n"

    headers = {"content-type": "multipart/form-data; boundary=b"}
    content = body() if chunked else b"".join(body())
    with _client(server) as client:
        response = client.post("/visualdub", content=content, headers=headers)

    refused = _assert_failed(response, 413)
    assert refused["data"]["error_code"] == "ERR_009"
    limit = 5 << 20 if chunked else (10 << 20) + (1 << 20)
    assert f"limit of {limit} bytes" in refused["message"]


@pytest.mark.parametrize(
    "payload, word",
    [
        ({"assets": []}, "model is required"),
        ({"model": "nope"}, "Unknown model"),
        ({"model": "e1", "options": {"intensity": 7}}, "intensity"),
        ({"model": "e1", "assets": [{"type": "video", "url": "ftp://127.0.0.1/v.mp4"}]}, "URL"),
        ({"model": "e1"}, "No video given"),
    ],
)
def test_bad_json_requests_are_invalid(server, payload, word):
    with _client(server) as client:
        body = _assert_failed(client.post("/visualdub", json=payload), 400)
    assert body["status_code"] == "invalid_request"
    assert word in body["message"]


def test_faceless_video_fails_with_no_face_found(server, demo, tmp_path):
    video = tmp_path / "wall.mp4"
    gray_video(video)
    with _client(server) as client:
        response = upload(client, video, demo.audio)
        assert response.status_code == 201, response.text
        request_id = response.json()["data"]["request_id"]
        status = _wait(client, request_id)
        body = _assert_failed(client.get("/get_file", params={"request_id": request_id}), 422)

    assert status["status"] == "Failed" and status["status_code"] == "failed"
    assert status["error"]["error_code"] == "ERR_004"
    assert status["error"]["error_name"] == "NO_FACE_FOUND"
    assert body["data"] == status["error"]


def _small_inputs(folder: Path) -> tuple[Path, Path]:
    inputs = make_demo_inputs(folder / "b", seconds=1.0, size=128)
    return inputs.video, inputs.audio
