"""The shim survives its own death: a real ``serve`` process, killed and started again.

Each test runs a server as a separate process on loopback with its store in tmp_path, and
checks what a client sees: every accepted request ends ``success`` exactly once, with a
whole MP4, and its webhook arrives once.
"""

from __future__ import annotations

import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the REST shim needs the server extra (fastapi)")
pytest.importorskip("uvicorn", reason="the REST shim needs the server extra (uvicorn)")
pytest.importorskip("httpx", reason="the shim's tests talk to it with httpx")

from serving import (  # noqa: E402
    Receiver,
    ServerProcess,
    alive,
    ended,
    request_rows,
    submit,
    upload,
    wait_for,
)

from lipsync.demo import make_demo_inputs  # noqa: E402
from lipsync.media import validate_video  # noqa: E402

KEY = "key-durable"
SECRET = "durable-secret"
# A 3 s, 192 px demo job takes about 4 s on 2 cores (1 s of it before the first phase);
# a 1 s, 128 px one about 2 s, and well under 1 s once its video's analysis is cached.
JOB_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def long_inputs(tmp_path_factory):
    return make_demo_inputs(tmp_path_factory.mktemp("long"), seconds=3.0, size=192)


@pytest.fixture(scope="module")
def short_inputs(tmp_path_factory):
    return make_demo_inputs(tmp_path_factory.mktemp("short"), seconds=1.0, size=128)


@pytest.fixture
def server(tmp_path):
    """A server (not started) with one job worker; stopped at the end whatever happened."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"LIPSYNC_API_KEYS": KEY, "LIPSYNC_WEBHOOK_SECRET": SECRET}
    made = ServerProcess(home, env, ("--workers", "1", "--allow-private-urls"))
    yield made
    made.stop()


def test_crash_mid_job_then_restart_finishes_every_request_once(server, receiver, long_inputs):
    hook = receiver.url + "/crash"
    with server.start().client(KEY) as client:
        ids = [submit(client, long_inputs, webhook=hook) for _ in range(3)]
        # One worker: the first job is under way, the other two wait behind it.
        wait_for(client, ids[0], _started, JOB_TIMEOUT)
    server.crash()
    killed = request_rows(server.home)[ids[0]]
    assert killed["status"] == "running", "killed in the middle of the job"

    with server.start().client(KEY) as client:
        finals = [wait_for(client, i, ended, JOB_TIMEOUT) for i in ids]
        listed = client.get("/list_requests", params={"limit": 100}).json()
        files = [client.get("/get_file", params={"request_id": i}) for i in ids]

    assert [f["status_code"] for f in finals] == ["success"] * 3, finals
    assert sorted(r["request_id"] for r in listed["data"]) == sorted(ids)
    assert listed["total_requests"] == 3, "nothing lost, nothing doubled"
    frames = validate_video(long_inputs.video).frame_count
    for response, path in zip(files, _saved(files, server.home), strict=True):
        assert response.status_code == 200 and response.content[4:8] == b"ftyp"
        assert validate_video(path).frame_count == frames, "a whole video"

    rows = request_rows(server.home)
    assert [rows[i]["attempts"] for i in ids] == [2, 1, 1], "only the killed job ran again"
    outputs = server.home / "server" / "outputs"
    assert sorted(p.name for p in outputs.iterdir()) == sorted(
        Path(rows[i]["output"]).name for i in ids
    ), "one file per request, no partial output left"
    _assert_one_webhook_each(receiver, "/crash", ids)


def test_server_killed_alone_leaves_its_job_to_the_worker(server, receiver, long_inputs):
    hook = receiver.url + "/orphan"
    with server.start().client(KEY) as client:
        request_id = submit(client, long_inputs, webhook=hook)
        wait_for(client, request_id, _started, JOB_TIMEOUT)
    left = server.kill_server_only()
    worker = request_rows(server.home)[request_id]["owner"]
    assert any(alive(pid) for pid in left), "the job worker outlives its server"

    with server.start().client(KEY) as client:
        final = wait_for(client, request_id, ended, JOB_TIMEOUT)
        response = client.get("/get_file", params={"request_id": request_id})
    assert final["status_code"] == "success", final
    assert response.status_code == 200 and response.content[4:8] == b"ftyp"

    row = request_rows(server.home)[request_id]
    assert row["attempts"] == 1, "the new server left the job to its living owner"
    assert worker.split("/")[1] in {str(pid) for pid in left}
    _assert_one_webhook_each(receiver, "/orphan", [request_id])

    # Its job done, the orphaned worker exits instead of taking more.
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in left) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in left), "processes of the killed server linger"


def test_undelivered_webhook_is_sent_after_a_restart(server, receiver, short_inputs):
    receiver.script["/late"] = [503]  # the first attempt fails; the retry waits 2 s
    with server.start().client(KEY) as client:
        request_id = submit(client, short_inputs, webhook=receiver.url + "/late")
        (first,) = receiver.wait_posts("/late", 1, timeout=JOB_TIMEOUT)
    status = server.stop()
    assert status in (0, -15), server.log()  # uvicorn re-raises SIGTERM once shut down
    assert "Application shutdown complete" in server.log()

    state = _webhook_row(server.home, request_id)
    assert state["attempts"] == 1 and state["delivered_at"] is None
    assert state["gave_up_at"] is None, "stopping is not giving up"

    server.start()
    first, second = receiver.wait_posts("/late", 2, timeout=30)
    assert second["body"] == first["body"]
    assert second["headers"]["X-Lipsync-Signature"] == first["headers"]["X-Lipsync-Signature"]
    assert json.loads(second["body"])["request_id"] == request_id
    deadline = time.monotonic() + 10
    while _webhook_row(server.home, request_id)["delivered_at"] is None:
        assert time.monotonic() < deadline, "the delivery was not recorded"
        time.sleep(0.1)
    assert _webhook_row(server.home, request_id)["attempts"] == 2


def test_twenty_concurrent_submissions_all_complete(tmp_path, short_inputs):
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, {"LIPSYNC_API_KEYS": KEY}, ("--workers", "2")).start()
    try:
        with ThreadPoolExecutor(20) as pool:
            submitted = list(pool.map(lambda _: _upload_once(server, short_inputs), range(20)))
        ids = [body["data"]["request_id"] for body in submitted]
        with server.client(KEY) as client:
            finals = [wait_for(client, i, ended, JOB_TIMEOUT) for i in ids]
            heads = [
                client.get("/get_file", params={"request_id": i}, headers={"range": "bytes=4-7"})
                for i in ids
            ]
            listed = client.get("/list_requests", params={"limit": 100}).json()
            assets = client.get("/list_assets").json()["data"]
    finally:
        server.stop()

    assert len(set(ids)) == 20
    assert [f["status_code"] for f in finals] == ["success"] * 20
    assert [(h.status_code, h.content) for h in heads] == [(206, b"ftyp")] * 20
    assert listed["total_requests"] == 20
    assert sorted(r["request_id"] for r in listed["data"]) == sorted(ids)
    assert sorted(a["media_type"] for a in assets) == ["audio", "video"], "uploads kept once"
    assert max(r["attempts"] for r in request_rows(home).values()) == 1


# --- helpers ----------------------------------------------------------------------------------


def _upload_once(server: ServerProcess, inputs) -> dict:
    with server.client(KEY) as client:
        response = upload(client, inputs.video, inputs.audio)
    assert response.status_code == 201, response.text
    return response.json()


def _started(data: dict) -> bool:
    assert data["status_code"] in ("pending", "in_progress"), data
    return data["status_code"] == "in_progress" and data["phase"] is not None


def _saved(responses, home: Path) -> list[Path]:
    paths = []
    for number, response in enumerate(responses):
        path = home / f"got-{number}.mp4"
        path.write_bytes(response.content)
        paths.append(path)
    return paths


def _webhook_row(home: Path, request_id: str) -> sqlite3.Row:
    with sqlite3.connect(home / "server" / "lipsync.db") as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT * FROM webhooks WHERE request_id = ?", (request_id,)).fetchone()


def _assert_one_webhook_each(receiver: Receiver, path: str, ids: list[str]) -> None:
    calls = receiver.wait_posts(path, len(ids), timeout=30)
    time.sleep(1.5)  # longer than the server's look for due webhooks: no late duplicate
    bodies = [json.loads(c["body"]) for c in receiver.posts(path)]
    assert sorted(b["request_id"] for b in bodies) == sorted(ids), "one webhook per request"
    assert {b["event"] for b in bodies} == {"completed"}
    assert len(calls) == len(ids)
