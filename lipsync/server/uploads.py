"""Multipart uploads streamed straight into the store.

Starlette's form parser spools each file part whole (to memory, then a temporary file)
before the endpoint sees it, so an upload was written twice and checked against its size
limit only once it had fully arrived. Here the body is parsed as it streams in: a file
part is written into the store's upload folder, hashed on the way, and refused as soon
as it passes the limit; a text field is kept in memory up to a small size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from ..errors import InvalidOptionError
from .store import Store, UploadSink

# A job names two files (video and audio); a few text fields beside them, all short.
MAX_FILES = 2
MAX_FIELDS = 16
MAX_FIELD_BYTES = 64 << 10


@dataclass(frozen=True)
class ReceivedFile:
    """A file part, whole on disk in the store's upload folder (to be kept or deleted)."""

    path: Path  # the file, named with the client's extension so the media checks see it
    sha256: str  # of its bytes
    filename: str  # the name the client gave it


async def read_multipart(
    chunks: AsyncIterator[bytes], content_type: str, store: Store, limit: int
) -> dict[str, str | ReceivedFile]:
    """The fields of a ``multipart/form-data`` body: text as str, files as ReceivedFile.

    A later part of the same name replaces an earlier one. If anything goes wrong, no file
    is left behind; on success the caller keeps or deletes every ReceivedFile.

    Raises:
        UploadTooLargeError: a file part is larger than ``limit`` bytes.
        InvalidOptionError: no boundary, a malformed body, or too many or too long parts.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidOptionError("a multipart/form-data body needs a boundary")

    reader = _FormReader(store, limit)
    parser = MultipartParser(boundary, reader.callbacks())
    try:
        # The parser's callbacks write to disk: feed it off the event loop.
        async for chunk in chunks:
            await run_in_threadpool(parser.write, chunk)
        await run_in_threadpool(parser.finalize)
        if not reader.ended:
            raise InvalidOptionError("the multipart body ends before its closing boundary")
    except MultipartParseError as exc:
        reader.discard()
        raise InvalidOptionError(f"malformed multipart body: {exc}") from None
    except BaseException:
        reader.discard()
        raise
    return reader.fields


@dataclass
class _FormReader:
    """The parser's callbacks: headers, then each part's data into a file or a buffer."""

    store: Store
    limit: int
    fields: dict[str, str | ReceivedFile] = field(default_factory=dict)
    ended: bool = False
    _header: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)
    _headers: dict[bytes, bytes] = field(default_factory=dict)
    _name: str = ""
    _filename: str | None = None
    _sink: UploadSink | None = None
    _text: bytearray = field(default_factory=bytearray)
    _count: int = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def discard(self) -> None:
        """Delete every file received or being received."""
        if self._sink is not None:
            self._sink.abort()
            self._sink = None
        for value in self.fields.values():
            if isinstance(value, ReceivedFile):
                value.path.unlink(missing_ok=True)

    def _part_begin(self) -> None:
        self._count += 1
        if self._count > MAX_FILES + MAX_FIELDS:
            raise InvalidOptionError(f"a form may have at most {MAX_FILES + MAX_FIELDS} parts")
        self._headers = {}
        self._text = bytearray()

    def _header_end(self) -> None:
        self._headers[bytes(self._header).lower()] = bytes(self._value)
        self._header.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        kind, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if kind != b"form-data" or name is None:
            raise InvalidOptionError("each form part needs Content-Disposition: form-data; name")
        self._name = name.decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._filename = None if filename is None else filename.decode("utf-8", "replace")
        if self._filename is None:
            return

        files = sum(isinstance(v, ReceivedFile) for k, v in self.fields.items() if k != self._name)
        if files >= MAX_FILES:
            raise InvalidOptionError(f"a job takes at most {MAX_FILES} files (video and audio)")
        suffix = Path(self._filename).suffix
        self._sink = self.store.open_upload(suffix, self.limit)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._sink is not None:
            self._sink.write(data[start:end])
            return
        self._text.extend(data[start:end])
        if len(self._text) > MAX_FIELD_BYTES:
            raise InvalidOptionError(
                f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes"
            )

    def _part_end(self) -> None:
        previous = self.fields.get(self._name)
        if isinstance(previous, ReceivedFile):  # replaced by this part: not kept
            previous.path.unlink(missing_ok=True)

        if self._sink is None:
            self.fields[self._name] = self._text.decode("utf-8", "replace")
            return
        path, sha256 = self._sink.finish()
        self._sink = None
        self.fields[self._name] = ReceivedFile(path, sha256, self._filename or "")

    def _end(self) -> None:
        self.ended = True
