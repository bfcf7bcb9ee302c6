"""The hosted API's reference, replayed against the shim with curl, on a shared clip.

Each request below is the reference's own (``../shared/api-reference.txt``): its curl line,
its request lines and its JSON body, with only the host changed (and the body's example
URLs pointed at a file server and a webhook receiver on loopback). Every input mode the
reference names is used on a real clip, and each answer is compared with the documented
example's shape.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the REST shim needs the server extra (fastapi)")
pytest.importorskip("uvicorn", reason="the REST shim needs the server extra (uvicorn)")
pytest.importorskip("httpx", reason="the shim's tests talk to it with httpx")
if shutil.which("curl") is None:
    pytest.skip("the reference's examples are curl lines: no curl here", allow_module_level=True)

from serving import ServerProcess, alive, ended, request_rows, wait_for  # noqa: E402

from lipsync.demo import make_demo_inputs  # noqa: E402
from lipsync.media import validate_video  # noqa: E402

KEY = "YOUR_API_KEY"  # the reference's placeholder, accepted as it is
JOB_TIMEOUT = 240.0  # a 5 s shared clip on 2 cores, first run (scenes, faces, dub)

# The documented examples' keys, level by level.
CREATED_DATA = {"request_id", "assets", "credit_details"}
LISTED_ROW = {"request_id", "status", "status_code", "created_at", "completed_at"}
STATUS_DATA = {"request_id", "status", "status_code", "assets"}


@pytest.fixture(scope="module")
def files(shared_media, tmp_path_factory):
    """A loopback HTTP server for URL assets: the shared clip and a voice, as URLs."""
    folder = tmp_path_factory.mktemp("served")
    shutil.copy(shared_media / "talk5.mp4", folder / "video.mp4")
    shutil.copy(shared_media / "speech_a.wav", folder / "audio.wav")
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    home = tmp_path_factory.mktemp("reference")
    args = ("--workers", "1", "--allow-private-urls")  # URL assets come from 127.0.0.1
    made = ServerProcess(home, {"LIPSYNC_API_KEYS": KEY}, args).start()
    yield made
    made.stop()


@pytest.fixture(scope="module")
def uploaded(shim, shared_media):
    """File Upload (Form): the shared clip and a voice, as multipart files; run to the end."""
    body = _curl_json(
        shim,
        "-X", "POST", shim.url + "/visualdub",
        "-F", "model=e1",
        "-F", f"video=@{shared_media / 'talk5.mp4'}",
        "-F", f"audio=@{shared_media / 'speech_a.wav'}",
        "-F", 'options={"intensity": 2}',
    )  # fmt: skip
    assert body["status"] == "success" and body["message"] == "Job Created"
    assert set(body["data"]) == CREATED_DATA
    with shim.client(KEY) as client:
        final = wait_for(client, body["data"]["request_id"], ended, JOB_TIMEOUT)
    assert final["status_code"] == "success", final
    return body["data"]


def test_authentication_example_as_written(shim, uploaded):
    # curl -X GET https://.../list_assets -H "x-api-key: YOUR_API_KEY", host changed.
    body = _curl_json(shim, "-X", "GET", shim.url + "/list_assets", "-H", f"x-api-key: {KEY}")
    assert body["status"] == "success" and body["message"] == "Assets listed"
    assert {"asset_id": uploaded["assets"][0]["asset_id"], "media_type": "video"} in body["data"]
    assert all(set(row) == {"asset_id", "media_type"} for row in body["data"])

    refused = _curl(shim, "-X", "GET", shim.url + "/list_assets", key=None)
    assert refused.status == 401 and refused.json()["status_code"] == "unauthorized"


def test_the_reference_requests_as_written(shim, uploaded, shared_media, tmp_path):
    request_id = uploaded["request_id"]
    video_id, audio_id = (a["asset_id"] for a in uploaded["assets"])

    listed = _curl_json(shim, shim.url + "/list_requests?limit=10&page_no=0")
    assert listed["message"] == "Requests listed"
    assert set(listed) == {"status", "message", "data", "total_requests", "end_of_records"}
    assert all(set(row) == LISTED_ROW for row in listed["data"])
    assert request_id in [row["request_id"] for row in listed["data"]]

    status = _curl_json(shim, shim.url + f"/get_status?request_id={request_id}")
    assert status["message"] == "Request status fetched"
    assert set(status["data"]) >= STATUS_DATA, "the documented fields, extras beside them"
    assert status["data"]["assets"] == {"video": video_id, "audio": audio_id}
    assert (status["data"]["status"], status["data"]["status_code"]) == ("Success", "success")

    asset = _curl_json(shim, shim.url + f"/get_asset?asset_id={video_id}")
    assert asset == {
        "status": "success",
        "message": "Asset Fetched",
        "data": {"asset_id": video_id, "media_type": "video"},
    }
    missing = _curl(shim, shim.url + "/get_asset?asset_id=999999")
    assert missing.status == 404
    error = missing.json()  # the documented fields, and the status word beside them
    assert (error["status"], error["message"], error["status_code"]) == (
        "failed",
        "Asset not found",
        "not_found",
    )

    saved = tmp_path / "output.mp4"
    got = _curl(shim, "-o", str(saved), shim.url + f"/get_file?request_id={request_id}")
    assert got.status == 200
    assert got.headers["content-type"] == "video/mp4"
    assert got.headers["content-disposition"] == 'attachment; filename="output.mp4"'
    source = validate_video(shared_media / "talk5.mp4")
    assert validate_video(saved).frame_count == source.frame_count


def test_json_body_of_the_reference_with_url_assets_and_a_webhook(shim, files, receiver):
    body = json.loads(_REFERENCE_JSON)
    body["assets"][0]["url"] = files + "/video.mp4"
    body["assets"][1]["url"] = files + "/audio.wav"
    body["webhook"]["url"] = receiver.url + "/reference"
    body["model"] = "e1"  # the reference's e2 needs weights the user brings (next test)
    created = _curl_json(
        shim, "-X", "POST", shim.url + "/visualdub",
        "-H", "Content-Type: application/json", "--data", json.dumps(body),
    )  # fmt: skip
    assert set(created["data"]) == CREATED_DATA
    assert [a["type"] for a in created["data"]["assets"]] == ["video", "audio"]

    with shim.client(KEY) as client:
        final = wait_for(client, created["data"]["request_id"], ended, JOB_TIMEOUT)
    assert final["status_code"] == "success", final
    (posted,) = receiver.wait_posts("/reference", 1, timeout=30)
    assert json.loads(posted["body"])["event"] == "completed"


def test_reference_json_as_written_asks_for_the_e2_weights(shim, files, receiver):
    # The body as the reference gives it, model e2 included; this shim has no e2 weights.
    body = json.loads(_REFERENCE_JSON)
    body["assets"][0]["url"] = files + "/video.mp4"
    body["assets"][1]["url"] = files + "/audio.wav"
    body["webhook"]["url"] = receiver.url + "/e2"
    answer = _curl(
        shim, "-X", "POST", shim.url + "/visualdub",
        "-H", "Content-Type: application/json", "--data", json.dumps(body),
    )  # fmt: skip
    assert answer.status == 400
    refused = answer.json()
    assert (refused["status"], refused["status_code"]) == ("failed", "invalid_request")
    assert "'e2'" in refused["message"] and "is not installed" in refused["message"]
    assert "python -m lipsync models import PATH --name e2" in refused["message"], "how to"
    assert not receiver.posts("/e2"), "nothing was accepted, so nothing is notified"


@pytest.mark.parametrize("mode", ["json_asset_ids", "form_asset_ids", "form_mix"])
def test_every_other_input_mode_dubs_the_shared_clip(shim, uploaded, shared_media, mode):
    video_id, audio_id = (a["asset_id"] for a in uploaded["assets"])
    url = shim.url + "/visualdub"
    if mode == "json_asset_ids":
        assets = [{"type": "video", "asset_id": video_id}, {"type": "audio", "asset_id": audio_id}]
        payload = json.dumps({"model": "e1", "assets": assets, "options": {"intensity": 1}})
        args = ["-H", "Content-Type: application/json", "--data", payload]
    elif mode == "form_asset_ids":
        args = ["-F", "model=e1", "-F", f"video_asset_id={video_id}"]
        args += ["-F", f"audio_asset_id={audio_id}"]
    else:  # a new file beside a kept asset
        args = ["-F", "model=e1", "-F", f"video_asset_id={video_id}"]
        args += ["-F", f"audio=@{shared_media / 'speech_b.wav'}"]

    created = _curl_json(shim, "-X", "POST", url, *args)
    assert created["data"]["assets"][0] == {"type": "video", "asset_id": video_id}
    with shim.client(KEY) as client:
        final = wait_for(client, created["data"]["request_id"], ended, JOB_TIMEOUT)
    assert final["status_code"] == "success", final
    assert final["assets"]["video"] == video_id


def test_truncated_upload_is_data_corrupted(shim, shared_media, tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes((shared_media / "talk5.mp4").read_bytes()[:20_000])
    answer = _curl(
        shim, "-X", "POST", shim.url + "/visualdub",
        "-F", "model=e1", "-F", f"video=@{cut}", "-F", f"audio=@{shared_media / 'speech_a.wav'}",
    )  # fmt: skip
    assert answer.status == 400
    body = answer.json()
    assert body["status"] == "failed"
    assert (body["data"]["error_code"], body["data"]["error_name"]) == ("ERR_007", "DATA_CORRUPTED")
    assert "cut.mp4" in body["message"]


def test_a_job_whose_worker_keeps_dying_fails_with_err_003(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    inputs = make_demo_inputs(tmp_path / "demo", seconds=3.0, size=192)
    server = ServerProcess(home, {"LIPSYNC_API_KEYS": KEY}, ("--workers", "1")).start()
    try:
        with server.client(KEY) as client:
            with open(inputs.video, "rb") as v, open(inputs.audio, "rb") as a:
                files = {"video": ("v.mp4", v, "video/mp4"), "audio": ("a.wav", a, "audio/wav")}
                response = client.post("/visualdub", data={"model": "e1"}, files=files)
            request_id = response.json()["data"]["request_id"]

            # Kill whichever worker holds the job, each time it is claimed again: 3 times.
            for attempt in (1, 2, 3):
                pid = _owner_pid(home, request_id, attempt)
                subprocess.run(["kill", "-9", str(pid)], check=True)
                deadline = time.monotonic() + 30
                while alive(pid):
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            final = wait_for(client, request_id, ended, JOB_TIMEOUT)
            got = client.get("/get_file", params={"request_id": request_id})
    finally:
        server.stop()

    assert final["status_code"] == "failed"
    assert final["error"]["error_code"] == "ERR_003"
    assert final["error"]["error_name"] == "INTERNAL_SERVER_ERROR"
    assert got.status_code == 500 and got.json()["data"]["error_code"] == "ERR_003"
    assert request_rows(home)[request_id]["attempts"] == 3


# --- helpers ------------------------------------------------------------------------------

_REFERENCE_JSON = """
{
  "model": "e2",
  "assets": [
    { "type": "video", "url": "https://example.com/video.mp4" },
    { "type": "audio", "url": "https://example.com/audio.mp3" }
  ],
  "options": { "intensity": 2 },
  "webhook": { "url": "https://yourapp.com/webhook", "headers": {}, "params": {} }
}
"""


class _Answer:
    """What curl got: the HTTP status, the headers (lower-cased) and the body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> dict:
        return json.loads(self.body)


def _curl(shim: ServerProcess, *args: str, key: str | None = KEY) -> _Answer:
    """Run curl with the API key header; the status line and headers come from -D."""
    head = shim.home / "curl-headers.txt"
    auth = [] if key is None else ["-H", f"x-api-key: {key}"]
    done = subprocess.run(
        ["curl", "-sS", "-D", str(head), *auth, *args],
        capture_output=True,
        timeout=120,
        check=True,
    )
    lines = head.read_text().splitlines()
    # The last status line: curl may print a 100 Continue before the answer.
    start = max(i for i, line in enumerate(lines) if line.startswith("HTTP/"))
    status = int(lines[start].split()[1])
    headers = {}
    for line in lines[start + 1 :]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return _Answer(status, headers, done.stdout)


def _curl_json(shim: ServerProcess, *args: str) -> dict:
    answer = _curl(shim, *args)
    assert answer.status in (200, 201), answer.body
    return answer.json()


def _owner_pid(home: Path, request_id: str, attempt: int) -> int:
    """The pid of the worker holding ``request_id`` on its ``attempt``-th claim."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        row = request_rows(home).get(request_id)
        if row is not None and row["status"] == "running" and row["attempts"] == attempt:
            return int(row["owner"].split("/")[1])
        time.sleep(0.05)
    raise AssertionError(f"attempt {attempt} of {request_id} was not claimed")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
