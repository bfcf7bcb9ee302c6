"""Multipart bodies parsed as they stream in, file parts written straight into the store."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

pytest.importorskip("python_multipart", reason="the REST shim needs the server extra")
pytest.importorskip("starlette", reason="the REST shim needs the server extra")

from lipsync.errors import InvalidOptionError  # noqa: E402
from lipsync.server.store import Store, UploadTooLargeError  # noqa: E402
from lipsync.server.uploads import MAX_FIELD_BYTES, ReceivedFile, read_multipart  # noqa: E402

TYPE = "multipart/form-data; boundary=XyZ"


def _body(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--XyZ\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + b"--XyZ--\r\n"


def _read(store: Store, body: bytes, limit: int = 1 << 20, chunk: int = 7):
    async def chunks():
        for start in range(0, len(body), chunk):  # small pieces: parts split across chunks
            yield body[start : start + chunk]

    return asyncio.run(read_multipart(chunks(), TYPE, store, limit))


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path)


def _left(store: Store) -> list[str]:
    return sorted(p.name for p in store.upload_dir.iterdir())


def test_fields_and_files_arrive_whole_and_hashed(store):
    video, audio = bytes(range(256)) * 40, b"RIFF" + b"\x01" * 999
    fields = _read(
        store,
        _body(
            ("model", None, b"e1"),
            ("video", "Talk.MP4", video),
            ("options", None, b'{"intensity": 3}'),
            ("audio", "voice.wav", audio),
        ),
    )

    assert fields["model"] == "e1" and fields["options"] == '{"intensity": 3}'
    for name, data, suffix in (("video", video, ".mp4"), ("audio", audio, ".wav")):
        got = fields[name]
        assert isinstance(got, ReceivedFile)
        assert got.path.parent == store.upload_dir and got.path.suffix == suffix
        assert got.path.read_bytes() == data
        assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert fields["video"].filename == "Talk.MP4"


def test_a_file_past_the_limit_is_refused_and_nothing_is_left(store):
    body = _body(("audio", "a.wav", b"ok"), ("video", "v.mp4", bytes(5000)))
    with pytest.raises(UploadTooLargeError, match="limit of 4096 bytes"):
        _read(store, body, limit=4096, chunk=512)
    assert _left(store) == [], "the first file and the partial second are deleted"


@pytest.mark.parametrize(
    "body, words",
    [
        (_body(("video", "v.mp4", b"abc"))[:-12], "closing boundary"),
        (_body(("a", "1.wav", b"1"), ("b", "2.wav", b"2"), ("c", "3.wav", b"3")), "at most 2"),
        (_body(("notes", None, bytes(MAX_FIELD_BYTES + 1))), "longer than"),
        (b"--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--\r\n", "Content-Disposition"),
    ],
)
def test_bad_bodies_are_refused_and_leave_nothing(store, body, words):
    with pytest.raises(InvalidOptionError, match=words):
        _read(store, body)
    assert _left(store) == []


def test_a_part_sent_twice_keeps_the_last_only(store):
    fields = _read(store, _body(("video", "a.mp4", b"first"), ("video", "b.mp4", b"second")))
    assert fields["video"].path.read_bytes() == b"second"
    assert _left(store) == [fields["video"].path.name]


def test_no_boundary_is_refused(store):
    async def empty():
        yield b""

    with pytest.raises(InvalidOptionError, match="boundary"):
        asyncio.run(read_multipart(empty(), "multipart/form-data", store, 100))
