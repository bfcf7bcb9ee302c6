"""The redis job queue end to end: a real redis-server, the shim and two remote workers, each
a separate process on loopback, sharing no folder.

One run covers what the queue promises: ten jobs spread over both workers; one worker killed
(SIGKILL) in the middle of a job, which the other then finishes; the shim killed and started
again while jobs run and wait; every request ends ``success`` exactly once, with a whole
video, one output file and one webhook.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the REST shim needs the server extra (fastapi)")
pytest.importorskip("uvicorn", reason="the REST shim needs the server extra (uvicorn)")
pytest.importorskip("httpx", reason="the shim's tests talk to it with httpx")
pytest.importorskip("dramatiq", reason="the redis queue needs the queue extra (dramatiq)")
pytest.importorskip("redis", reason="the redis queue needs the queue extra (redis-py)")

from serving import (  # noqa: E402
    Receiver,
    RedisServer,
    ServerProcess,
    WorkerProcess,
    ended,
    request_rows,
    submit,
    wait_for,
)

from lipsync.demo import make_demo_inputs  # noqa: E402
from lipsync.media import validate_video  # noqa: E402

KEY = "key-redis"
TOKEN = "worker-token-for-tests"
# Short enough that a killed worker's job comes back within seconds, long enough that a
# shim restart on a busy 2-core machine does not cost a live worker its claim.
LEASE = 8.0
JOBS = 10
TIMEOUT = 180.0  # seconds for all jobs; a 1 s, 128 px job takes about 2 s on 2 idle cores


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_demo_inputs(tmp_path_factory.mktemp("inputs"), seconds=1.0, size=128)


@pytest.fixture
def receiver():
    served = Receiver()
    yield served
    served.close()


@pytest.fixture
def cluster(tmp_path, redis_server):
    """A shim on the redis queue and two workers (not started); all stopped at the end."""
    home = tmp_path / "shim"
    home.mkdir()
    env = {"LIPSYNC_API_KEYS": KEY, "LIPSYNC_WORKER_TOKEN": TOKEN}
    args = ("--queue", redis_server.url, "--check-interval", "0.5", "--allow-private-urls")
    shim = ServerProcess(home, env, args)
    workers = [WorkerProcess(tmp_path / f"worker-{n}", env, ()) for n in "ab"]
    yield shim, workers
    for worker in workers:
        worker.stop()
    shim.stop()


def test_jobs_survive_a_killed_worker_and_a_restarted_shim(cluster, redis_server, inputs, receiver):
    shim, (first, second) = cluster
    shim.start()
    for worker in (first, second):
        worker.args = (
            *("--queue", redis_server.url, "--shim", shim.root),
            *("--lease", str(LEASE), "--face-workers", "1", "--heartbeat-timeout", "5"),
        )
        worker.launch()
    for worker in (first, second):
        worker.wait_ready()

    hook = receiver.url + "/redis"
    with shim.client(KEY) as client:
        ids = [submit(client, inputs, webhook=hook) for _ in range(JOBS)]

    # The first worker finishes a job, then dies in the middle of its next one.
    killed = _wait_until(lambda: first.done() and _running_on(shim.home, first.pid))
    first.kill()

    # The shim dies while the second worker runs a job and others wait, and comes back.
    _wait_until(lambda: _running_on(shim.home, second.pid))
    assert _count(shim.home, "pending") > 0, "jobs still wait when the shim dies"
    shim.crash()
    shim.start(port=shim.port)  # the workers know the shim by its address

    with shim.client(KEY) as client:
        finals = [wait_for(client, i, ended, TIMEOUT) for i in ids]
        listed = client.get("/list_requests", params={"limit": 100}).json()
        files = [client.get("/get_file", params={"request_id": i}) for i in ids]

    assert [f["status_code"] for f in finals] == ["success"] * JOBS, finals
    assert listed["total_requests"] == JOBS, "nothing lost, nothing doubled"
    frames = validate_video(inputs.video).frame_count
    for number, response in enumerate(files):
        assert response.status_code == 200 and response.content[4:8] == b"ftyp"
        saved = shim.home / f"got-{number}.mp4"
        saved.write_bytes(response.content)
        assert validate_video(saved).frame_count == frames, "a whole video"

    # Each request was finished by one worker, once; both workers did some.
    by_first, by_second = first.done(), second.done()
    assert by_first and by_second, (by_first, by_second)
    assert len(by_second) == len(set(by_second)), "no job completed twice"
    assert sorted(by_first + by_second) == sorted(ids)
    assert killed in by_second, "the killed worker's job was finished by the other"

    rows = request_rows(shim.home)
    assert rows[killed]["attempts"] >= 2, "the killed job ran again"
    outputs = shim.home / "server" / "outputs"
    assert sorted(p.name for p in outputs.iterdir()) == sorted(
        Path(rows[i]["output"]).name for i in ids
    ), "one file per request; no partial or refused upload left behind"

    calls = receiver.wait_posts("/redis", JOBS, timeout=30)
    time.sleep(1.5)  # longer than the shim's look for due webhooks: no late duplicate
    bodies = [json.loads(c["body"]) for c in receiver.posts("/redis")]
    assert sorted(b["request_id"] for b in bodies) == sorted(ids), "one webhook per request"
    assert {b["event"] for b in bodies} == {"completed"} and len(calls) == JOBS


def test_local_workers_take_their_jobs_from_the_messages(tmp_path, redis_server, inputs):
    from lipsync.server.redisqueue import QUEUE_NAME, RedisOptions, open_broker

    # A shim on the redis queue with a local worker and no remote one: each job's message is
    # used up by the local worker that runs it, so none is left behind in Redis.
    url = redis_server.url.rsplit("/", 1)[0] + "/2"  # a database of its own
    home = tmp_path / "shim"
    home.mkdir()
    env = {"LIPSYNC_API_KEYS": KEY, "LIPSYNC_WORKER_TOKEN": TOKEN}
    shim = ServerProcess(home, env, ("--queue", url, "--workers", "1")).start()
    try:
        with shim.client(KEY) as client:
            ids = [submit(client, inputs) for _ in range(3)]
            finals = [wait_for(client, i, ended, TIMEOUT) for i in ids]
    finally:
        shim.stop()

    assert [f["status_code"] for f in finals] == ["success"] * 3, finals
    assert all(row["attempts"] == 1 for row in request_rows(home).values())
    consumer = open_broker(RedisOptions(url=url)).consume(QUEUE_NAME, prefetch=10, timeout=200)
    assert _received(consumer) == [], "no message is left for a job already done"


def test_the_shim_sends_a_job_again_whenever_its_message_may_be_lost(tmp_path, redis_server):
    from lipsync.server.queues import REMOTE_OWNER
    from lipsync.server.redisqueue import QUEUE_NAME, RedisOptions, RedisQueue, open_broker
    from lipsync.server.store import PENDING, Store

    url = redis_server.url.rsplit("/", 1)[0] + "/1"  # a database of its own
    store = Store(tmp_path)
    request_id = _stored_request(store, tmp_path)
    consumer = open_broker(RedisOptions(url=url)).consume(QUEUE_NAME, prefetch=10, timeout=200)

    queue = RedisQueue(store=store, url=url)
    queue.enqueue(request_id)
    assert _received(consumer) == [request_id]

    # Its worker went silent: the monitor takes the claim back and sends the job again.
    store.claim_request(request_id, REMOTE_OWNER + "gone/1/1", time.time() - 1)
    assert queue.requeue_abandoned(3) == [request_id]
    assert store.request(request_id).status == PENDING
    assert _received(consumer) == [request_id]
    assert queue.requeue_abandoned(3) == [] and _received(consumer) == []

    # A shim starting on this store cannot know what the last one sent: it sends again.
    restarted = RedisQueue(store=store, url=url, resend_after=1.0)
    assert restarted.requeue_abandoned(3) == []
    assert _received(consumer) == [request_id]

    # A message lost in Redis (a restart without persistence): sent again after a while.
    assert restarted.requeue_abandoned(3) == [] and _received(consumer) == []
    time.sleep(1.2)
    assert restarted.requeue_abandoned(3) == []
    assert _received(consumer) == [request_id]

    # A message still queued (no worker free for a long while) is not sent a second time.
    time.sleep(1.2)
    assert restarted.requeue_abandoned(3) == []  # sent: the last one was taken above
    for _ in range(2):
        time.sleep(1.2)
        assert restarted.requeue_abandoned(3) == []
    assert _received(consumer) == [request_id], "one message, however long it waits"


def test_a_job_sent_while_redis_is_down_goes_out_when_it_is_back(tmp_path, redis_server):
    from lipsync.server.redisqueue import QUEUE_NAME, RedisOptions, RedisQueue, open_broker
    from lipsync.server.store import Store

    # redis_server only skips this where redis-server is missing; the test starts its own.
    down = RedisServer(tmp_path)  # not started yet
    store = Store(tmp_path)
    request_id = _stored_request(store, tmp_path)
    queue = RedisQueue(store=store, url=down.url)
    queue.enqueue(request_id)  # refused: logged and kept, the submission itself succeeds

    down.start()
    try:
        consumer = open_broker(RedisOptions(url=down.url)).consume(QUEUE_NAME, timeout=200)
        assert _received(consumer) == []
        assert queue.requeue_abandoned(3) == []
        assert _received(consumer) == [request_id], "sent once, at the monitor's next look"
    finally:
        down.stop()


def test_a_silent_workers_unacknowledged_message_goes_back_on_the_queue(redis_server):
    from lipsync.server.redisqueue import QUEUE_NAME, RedisOptions, job_message, open_broker

    url = redis_server.url.rsplit("/", 1)[0] + "/2"
    # Every call looks for silent workers, so the test need not wait for a lucky draw.
    options = RedisOptions(url=url, heartbeat_timeout=1.0, maintenance_chance=1.0)
    open_broker(options).enqueue(job_message("taken-then-dropped"))

    # A worker takes the message and dies holding it: its broker never calls again.
    dead = open_broker(options).consume(QUEUE_NAME, prefetch=1, timeout=200)
    taken = _wait_until(lambda: next(dead), timeout=10)
    assert taken.args == ("taken-then-dropped",)

    alive = open_broker(options).consume(QUEUE_NAME, prefetch=1, timeout=200)
    assert next(alive) is None, "not yet: the dead worker's heartbeat is still recent"
    time.sleep(1.5)
    again = _wait_until(lambda: next(alive), timeout=10)
    assert again.args == ("taken-then-dropped",) and again.message_id == taken.message_id
    alive.ack(again)


# --- helpers ----------------------------------------------------------------------------------


def _wait_until(found, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (value := found()):
        assert time.monotonic() < deadline, "the run did not reach the expected state"
        time.sleep(0.05)
    return value


def _running_on(home: Path, pid: int) -> str | None:
    """The request a worker process holds once its job has begun (a phase is set)."""
    for row in request_rows(home).values():
        owner = row["owner"] or ""
        if row["status"] == "running" and f"/{pid}/" in owner and row["phase"] is not None:
            return row["request_id"]
    return None


def _count(home: Path, status: str) -> int:
    return sum(row["status"] == status for row in request_rows(home).values())


def _stored_request(store, folder: Path) -> str:
    """A PENDING request over two placeholder assets (nothing runs it here)."""
    assets = []
    for media_type in ("video", "audio"):
        received = folder / f"{media_type}.bin"
        received.write_bytes(media_type.encode())
        assets.append(store.add_asset("k", media_type, received, media_type * 8, 1.0))
    return store.create_request("k", "e1", 2, assets[0].id, assets[1].id, None).request_id


def _received(consumer) -> list[str]:
    """The request ids of the messages waiting in Redis now (taken and acknowledged)."""
    ids = []
    while (message := next(consumer)) is not None:
        ids.append(message.args[0])
        consumer.ack(message)
    return ids
