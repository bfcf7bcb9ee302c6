"""The shim's worker endpoints and the worker's HTTP queue, in one process (no Redis needed).

The app is driven with Starlette's test client and its lifespan is never entered, so no
local worker starts: every claim here is made through the worker endpoints.
"""

from __future__ import annotations

import sqlite3
import time

import pytest

pytest.importorskip("fastapi", reason="the REST shim needs the server extra (fastapi)")
pytest.importorskip("httpx", reason="the worker talks to the shim with httpx")

from fastapi.testclient import TestClient  # noqa: E402

from lipsync.demo import make_demo_inputs  # noqa: E402
from lipsync.errors import InvalidOptionError, NoFaceFoundError  # noqa: E402
from lipsync.media import validate_video  # noqa: E402
from lipsync.server.app import ServerSettings, create_app  # noqa: E402
from lipsync.server.queues import REMOTE_OWNER, WORKER_PATH, SqliteQueue, WorkerId  # noqa: E402
from lipsync.server.remoteworker import ShimQueue  # noqa: E402
from lipsync.server.store import FAILED, PENDING, RUNNING, SUCCESS, key_id  # noqa: E402

KEY = "key-workers"
TOKEN = "secret-for-workers"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_demo_inputs(tmp_path_factory.mktemp("inputs"), seconds=1.0, size=128)


@pytest.fixture
def shim(tmp_path):
    settings = ServerSettings(max_output_bytes=1 << 20)
    app = create_app(tmp_path, keys=[KEY], settings=settings, worker_token=TOKEN)
    return app, TestClient(app)


@pytest.fixture
def job(shim, inputs):
    """The id of a request waiting in the shim's store, made from the demo inputs."""
    app, _ = shim
    store = app.state.store
    assets = []
    for media_type, path in (("video", inputs.video), ("audio", inputs.audio)):
        copy = store.upload_dir / f"in-{media_type}{path.suffix}"
        copy.write_bytes(path.read_bytes())
        assets.append(store.add_asset(key_id(KEY), media_type, copy, media_type * 8, 1.0))
    made = store.create_request(key_id(KEY), "e1", 2, assets[0].id, assets[1].id, None)
    return made.request_id


def test_worker_endpoints_answer_only_the_token(shim, job):
    _, client = shim
    body = {"worker": str(WorkerId.current()), "lease": 5, "request_id": job}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        response = client.post(WORKER_PATH + "/claim", json=body, headers=headers)
        assert response.status_code == 401, response.text
    assert client.post(WORKER_PATH + "/claim", json=body, headers=AUTH).json()["claim"]


def test_without_a_token_there_are_no_worker_endpoints(tmp_path):
    client = TestClient(create_app(tmp_path, keys=[KEY], worker_token=""))
    body = {"worker": str(WorkerId.current()), "lease": 5}
    assert client.post(WORKER_PATH + "/claim", json=body, headers=AUTH).status_code == 404


def test_the_public_document_is_the_same_with_worker_endpoints(tmp_path, shim):
    app, _ = shim
    plain = create_app(tmp_path / "plain", keys=[KEY], worker_token="")
    assert app.openapi() == plain.openapi()
    operations = [op for path in app.openapi()["paths"].values() for op in path]
    assert len(operations) == 6
    assert not any(p.startswith(WORKER_PATH) for p in app.openapi()["paths"])


def test_a_claim_is_the_owners_alone(shim, job, inputs):
    app, client = shim
    store = app.state.store
    queue = _shim_queue(client, tmp=store.root.parent / "scratch")
    claim = queue.claim_request(job, WorkerId.current(), 30)
    assert claim is not None and claim.owner.startswith(REMOTE_OWNER) and claim.attempt == 1
    assert queue.claim_request(job, WorkerId.current(), 30) is None, "claimed once"

    video, audio = queue.inputs(claim)
    assert video.read_bytes() == inputs.video.read_bytes()
    assert audio.read_bytes() == inputs.audio.read_bytes() and audio.suffix == ".wav"
    assert queue.progress(claim, "face_detection", 25.0)
    assert store.request(job).phase == "face_detection" and store.request(job).progress == 25.0

    before = store.request(job).lease_until
    assert queue.renew(claim, 60) and store.request(job).lease_until > before

    # Another owner can neither write nor read the job.
    thief = {"owner": REMOTE_OWNER + "elsewhere/1/1"}
    paths = ("renew", "progress", "fail")
    bodies = ({"lease": 5}, {"phase": "x", "percent": 1}, {"code": "ERR_003", "name": "X"})
    for path, extra in zip(paths, bodies, strict=True):
        body = {**thief, "message": "m", **extra} if path == "fail" else {**thief, **extra}
        response = client.post(f"{WORKER_PATH}/jobs/{job}/{path}", json=body, headers=AUTH)
        assert response.status_code == 409, (path, response.text)
    response = client.get(f"{WORKER_PATH}/jobs/{job}/inputs/video", params=thief, headers=AUTH)
    assert response.status_code == 409
    assert store.request(job).status == RUNNING and store.request(job).owner == claim.owner


def test_an_output_is_checked_limited_and_recorded_once(shim, job, inputs, tmp_path):
    app, client = shim
    store = app.state.store
    queue = _shim_queue(client, tmp=tmp_path / "scratch")
    claim = queue.claim_request(job, WorkerId.current(), 30)
    url = f"{WORKER_PATH}/jobs/{job}/output"

    too_big = client.put(
        url, params={"owner": claim.owner}, content=b"\0" * (2 << 20), headers=AUTH
    )
    assert too_big.status_code == 413, too_big.text
    # Chunked, with no length announced: the limit holds while the body streams in.
    chunks = iter([b"\0" * (1 << 19)] * 4)
    streamed = client.put(url, params={"owner": claim.owner}, content=chunks, headers=AUTH)
    assert streamed.status_code == 413, streamed.text
    garbage = client.put(url, params={"owner": claim.owner}, content=b"not a video", headers=AUTH)
    assert garbage.status_code == 400 and garbage.json()["data"]["error_code"] == "ERR_008"
    assert list(store.upload_dir.glob("*.mp4")) == [], "refused uploads leave nothing"
    assert list(store.output_dir.iterdir()) == []
    assert store.request(job).status == RUNNING

    output = queue.output_path(claim)
    output.write_bytes(inputs.video.read_bytes())
    assert queue.finish(claim, output)
    done = store.request(job)
    assert done.status == SUCCESS and done.output.name == f"{job}-1.mp4"
    assert validate_video(done.output).frame_count == validate_video(inputs.video).frame_count

    # A second completion of the same claim is refused and leaves no file behind.
    assert not queue.finish(claim, output)
    assert not queue.fail(claim, NoFaceFoundError("late"))
    assert [p.name for p in store.output_dir.iterdir()] == [f"{job}-1.mp4"]
    assert store.request(job).status == SUCCESS
    queue.release(claim)
    assert not output.parent.exists(), "the job's scratch files are gone"


def test_a_failure_is_recorded_with_its_code(shim, job, tmp_path):
    app, client = shim
    queue = _shim_queue(client, tmp=tmp_path / "scratch")
    claim = queue.claim(WorkerId.current(), 30)  # the oldest waiting job
    assert claim is not None and claim.request_id == job
    assert queue.fail(claim, NoFaceFoundError("no face in any scene"))
    row = app.state.store.request(job)
    assert (row.status, row.error_code, row.error_name) == (FAILED, "ERR_004", "NO_FACE_FOUND")


def test_a_remote_claim_is_judged_by_its_lease_not_its_pid(shim, job, tmp_path):
    app, client = shim
    store = app.state.store
    queue = _shim_queue(client, tmp=tmp_path / "scratch")
    claim = queue.claim_request(job, WorkerId.current(), 0.5)

    # This very process holds the claim, alive, on this host: only the lease can tell.
    local = SqliteQueue(store=store)
    assert local.requeue_abandoned(3) == []
    time.sleep(0.7)
    assert local.requeue_abandoned(3) == [job]
    assert store.request(job).status == PENDING and store.request(job).owner is None
    assert not queue.renew(claim, 30), "the old owner has lost it"


def test_a_job_left_running_without_an_owner_is_queued_again(shim, job):
    # A store from before claims had owners: the job its server was running has none.
    app, _ = shim
    store = app.state.store
    with sqlite3.connect(store.db_path) as db:
        db.execute(
            "UPDATE requests SET status = ?, owner = NULL WHERE request_id = ?", (RUNNING, job)
        )
    assert SqliteQueue(store=store).requeue_abandoned(3) == [job]
    assert store.request(job).status == PENDING


def test_a_worker_checks_its_token_before_taking_work(shim, tmp_path):
    _, client = shim
    _shim_queue(client, tmp=tmp_path / "good").ping()
    wrong = _shim_queue(client, tmp=tmp_path / "bad")
    wrong._http.headers["authorization"] = "Bearer not-the-token"
    with pytest.raises(InvalidOptionError, match="LIPSYNC_WORKER_TOKEN"):
        wrong.ping()


def test_a_networked_queue_needs_a_worker_token(tmp_path):
    settings = ServerSettings(queue="redis", queue_url="redis://127.0.0.1:1/0")
    with pytest.raises(InvalidOptionError, match="worker token"):
        create_app(tmp_path, keys=[KEY], settings=settings, worker_token="")


@pytest.mark.parametrize(
    "argv",
    [
        ["worker", "--queue", "redis://127.0.0.1:1/0"],  # no LIPSYNC_WORKER_TOKEN
        ["worker", "--queue", "amqp://127.0.0.1"],
        ["serve", "--queue", "kafka://127.0.0.1"],
    ],
)
def test_bad_queue_settings_exit_with_the_option_error_status(argv, monkeypatch, capsys):
    from lipsync.cli import main

    monkeypatch.delenv("LIPSYNC_WORKER_TOKEN", raising=False)
    assert main(argv) == 2
    assert "INVALID_REQUEST" in capsys.readouterr().err


def _shim_queue(client: TestClient, tmp) -> ShimQueue:
    """A worker's queue whose HTTP calls go to the in-process app."""
    queue = ShimQueue("http://testserver", TOKEN, retry_for=1.0, scratch=tmp)
    queue._http = TestClient(client.app, base_url="http://testserver" + WORKER_PATH, headers=AUTH)
    return queue
