"""How a ``serve`` process is configured: keys and quotas (ERR_006), and the refusal of
private addresses for URL assets and webhooks, which is on unless the server allows them."""

from __future__ import annotations

import math

import pytest
from clips import gray_video

pytest.importorskip("fastapi", reason="the REST shim needs the server extra (fastapi)")
pytest.importorskip("uvicorn", reason="the REST shim needs the server extra (uvicorn)")
pytest.importorskip("httpx", reason="the shim's tests talk to it with httpx")

from serving import ServerProcess, ended, upload, wait_for  # noqa: E402

from lipsync.demo import make_demo_inputs  # noqa: E402
from lipsync.errors import InvalidOptionError  # noqa: E402
from lipsync.media import validate_video  # noqa: E402
from lipsync.server.keys import (  # noqa: E402
    KEYS_ENV,
    KEYS_FILE_ENV,
    QUOTAS_ENV,
    ApiKey,
    configured_keys,
    load_keys_file,
)
from lipsync.server.remote import PrivateAddressError, fetch_into, post_json  # noqa: E402
from lipsync.server.store import Store  # noqa: E402

QUOTA_KEY, REFUND_KEY, ZERO_KEY, FREE_KEY = "key-quota", "key-refund", "key-zero", "key-free"
JOB_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """(demo inputs, a faceless video, the seconds each is charged)."""
    folder = tmp_path_factory.mktemp("media")
    demo = make_demo_inputs(folder, seconds=1.0, size=128)
    wall = gray_video(folder / "wall.mp4")
    charge = {p: math.ceil(validate_video(p).duration) for p in (demo.video, wall)}
    return demo, wall, charge


@pytest.fixture(scope="module")
def server(tmp_path_factory, media):
    """A server with its default settings: keys from a file and the environment, quotas."""
    demo, wall, charge = media
    home = tmp_path_factory.mktemp("home")
    keys = home / "keys.toml"
    keys.write_text(
        "[[keys]]\n"
        f'key = "{QUOTA_KEY}"\n'
        f"quota_seconds = {2 * charge[demo.video]}\n"
        "[[keys]]\n"
        f'key = "{REFUND_KEY}"\n'
        f"quota_seconds = {charge[wall]}\n"
        "[[keys]]\n"
        f'key = "{FREE_KEY}"\n'
    )
    env = {KEYS_ENV: ZERO_KEY, QUOTAS_ENV: f"{ZERO_KEY}=0", KEYS_FILE_ENV: str(keys)}
    made = ServerProcess(home, env).start()
    yield made
    made.stop()


# --- quotas ---------------------------------------------------------------------------------


def test_quota_is_charged_per_job_and_refuses_with_err_006(server, media):
    demo, _wall, charge = media
    seconds = charge[demo.video]
    with server.client(QUOTA_KEY) as client:
        first, second, third = (upload(client, demo.video, demo.audio) for _ in range(3))

    for response, left in ((first, seconds), (second, 0)):
        assert response.status_code == 201, response.text
        credits = response.json()["data"]["credit_details"]
        assert credits == {"credits_deducted": seconds, "credits_remaining": left}

    assert third.status_code == 402, third.text
    body = third.json()
    assert body["status"] == "failed"
    assert body["data"]["error_code"] == "ERR_006"
    assert body["data"]["error_name"] == "INSUFFICIENT_CREDITS"
    assert f"0 s of {2 * seconds} s are left" in body["message"]
    assert body["message"] == body["data"]["message"]


def test_failed_jobs_give_their_seconds_back(server, media):
    demo, wall, _charge = media
    with server.client(REFUND_KEY) as client:
        first = upload(client, wall, demo.audio)
        assert first.status_code == 201, first.text
        final = wait_for(client, first.json()["data"]["request_id"], ended, JOB_TIMEOUT)
        assert final["error"]["error_code"] == "ERR_004"
        # The quota holds one such job: the failed one no longer counts.
        again = upload(client, wall, demo.audio)
    assert again.status_code == 201, again.text


def test_zero_quota_from_the_environment_refuses_and_unlimited_keys_pay_nothing(server, media):
    demo, _wall, _charge = media
    with server.client(ZERO_KEY) as client:
        refused = upload(client, demo.video, demo.audio)
    with server.client(FREE_KEY) as client:
        free = upload(client, demo.video, demo.audio)
    assert refused.status_code == 402 and refused.json()["data"]["error_code"] == "ERR_006"
    assert free.status_code == 201
    assert free.json()["data"]["credit_details"] == {"credits_deducted": 0}


# --- private addresses ----------------------------------------------------------------------


def test_default_server_refuses_a_loopback_asset_url(server, receiver):
    url = receiver.url + "/talk.mp4"
    payload = {"model": "e1", "assets": [{"type": "video", "url": url}]}
    with server.client(FREE_KEY) as client:
        response = client.post("/visualdub", json=payload)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status_code"] == "invalid_request"
    assert "127.0.0.1 is a loopback address" in body["message"]
    assert "--allow-private-urls" in body["message"]
    assert not [c for c in receiver.calls if c["path"] == "/talk.mp4"], "no connection made"


@pytest.mark.parametrize(
    "url, kind",
    [
        ("http://localhost:9/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://10.1.2.3/hook", "private"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ],
)
def test_default_server_refuses_private_webhooks(server, url, kind):
    with server.client(FREE_KEY) as client:
        response = client.post("/visualdub", json={"model": "e1", "webhook": url})
    assert response.status_code == 400, response.text
    assert f"is a {kind} address" in response.json()["message"]


def test_guard_holds_at_connection_time(tmp_path, receiver):
    # Redirects and names that resolve differently later meet the same check on connecting.
    store = Store(tmp_path)
    with pytest.raises(InvalidOptionError, match="loopback address"):
        fetch_into(store, receiver.url + "/v.mp4", 1 << 20, 5.0)
    with pytest.raises(PrivateAddressError, match="loopback address"):
        post_json(receiver.url + "/guard", b"{}", {}, 5.0)
    assert post_json(receiver.url + "/guard", b"{}", {}, 5.0, allow_private=True) == (200, None)
    assert list(store.upload_dir.iterdir()) == []


# --- the keys file and variables --------------------------------------------------------------


def test_keys_come_from_the_file_and_the_environment(tmp_path, monkeypatch):
    keys = tmp_path / "keys.toml"
    keys.write_text('[[keys]]\nkey = "a"\nquota_seconds = 90\n[[keys]]\nkey = "b"\n')
    monkeypatch.setenv(KEYS_ENV, "c, ,d")
    monkeypatch.setenv(QUOTAS_ENV, "b=30,d=5.5")
    assert configured_keys(keys) == [
        ApiKey("a", 90.0),
        ApiKey("b", 30.0),
        ApiKey("c"),
        ApiKey("d", 5.5),
    ]


@pytest.mark.parametrize(
    "text, words",
    [
        ("[[keys]]\nquota_seconds = 5\n", "no 'key'"),
        ('[[keys]]\nkey = "a"\nquota_seconds = -1\n', "seconds >= 0"),
        ('[[keys]]\nkey = "a"\nquota_seconds = "lots"\n', "seconds >= 0"),
        ('keys = "a"\n', "list of [[keys]]"),
        ("[[keys]\n", "cannot read"),
    ],
)
def test_bad_keys_files_are_refused(tmp_path, text, words):
    keys = tmp_path / "keys.toml"
    keys.write_text(text)
    with pytest.raises(InvalidOptionError, match=words.replace("[", r"\[")):
        load_keys_file(keys)


@pytest.mark.parametrize("quotas, words", [("nobody=5", "not configured"), ("a", "key=seconds")])
def test_bad_quota_variables_are_refused(monkeypatch, quotas, words):
    monkeypatch.delenv(KEYS_FILE_ENV, raising=False)
    monkeypatch.setenv(KEYS_ENV, "a")
    monkeypatch.setenv(QUOTAS_ENV, quotas)
    with pytest.raises(InvalidOptionError, match=words):
        configured_keys()


# --- helpers ----------------------------------------------------------------------------------
