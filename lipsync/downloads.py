"""Downloading model files: resumable, checked against a SHA-256, with the standard library.

:func:`download` fetches one URL into a file. It writes to ``TARGET.part`` first and renames
that into place only once the whole file has arrived and matched its hash, so a reader never
finds a half-written or corrupt file at the target. A ``.part`` left by an interrupted run is
continued with an HTTP Range request. :func:`pull_model` downloads a model the manifest
names (or any URL) and installs it through :func:`lipsync.models.import_onnx`, which checks
the file against its contract and records it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .cache import file_digest
from .errors import (
    DataCorruptedError,
    InternalError,
    InvalidOptionError,
    ModelNotInstalledError,
)
from .models import ModelStatus, import_onnx, load_manifest, models_home

logger = logging.getLogger(__name__)

# progress(done_bytes, total_bytes or None when the server does not say).
Progress = Callable[[int, int | None], None]

# Under models_home(): one folder per source URL, so an interrupted pull resumes on the
# next run and a different URL never continues another file's bytes.
DOWNLOADS_DIR = ".downloads"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_RESUME_HINT = "run the same command again to resume"


def download(
    url: str,
    target: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    progress: Progress | None = None,
    chunk: int = 1 << 20,
    timeout: float = 30,
) -> Path:
    """Download ``url`` to ``target``, resuming a partial download and checking its hash.

    Bytes go to ``target`` + ``.part``; when that file exists it is continued with a
    ``Range`` request (a server that ignores Range answers 200, and the download starts
    over). The finished file is checked and then moved into place atomically.

    Args:
        url: an ``http://`` or ``https://`` URL.
        target: where the file ends up; its folder is created. An existing file is replaced.
        sha256: the expected SHA-256 (hex); None skips the check.
        progress: called after each block with the bytes so far and the total (None when
            the server gives no length).
        chunk: bytes read per block.
        timeout: seconds to wait for the connection and for each block.

    Returns:
        The target path.

    Raises:
        InvalidOptionError: not an http(s) URL, or ``sha256`` is not 64 hex digits.
        DataCorruptedError: the file does not match ``sha256``; it has been deleted.
        InternalError: the server or the network failed (an HTTP error, a refused or
            timed-out connection, a transfer cut short). What arrived is kept in the
            ``.part`` file and the next call resumes from it.
    """
    _check_url(url)
    expected = _check_sha256(sha256)
    target = Path(target)
    part = target.with_suffix(target.suffix + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)

    offset = part.stat().st_size if part.is_file() else 0
    response, offset, total = _open(url, offset, timeout)
    with response:
        done = _receive(response, part, offset, total, url, progress, chunk)
    if total is not None and done < total:
        raise InternalError(
            f"downloading {url} stopped at {done} of {total} bytes", hint=_RESUME_HINT
        )

    if expected is not None:
        digest = file_digest(part)
        if digest != expected:
            part.unlink(missing_ok=True)
            raise DataCorruptedError(
                f"the file downloaded from {url} has SHA-256 {digest}, expected {expected}; "
                f"it was deleted (the server may serve another file, or it was damaged)"
            )

    os.replace(part, target)
    logger.info("downloaded %s to %s (%d bytes)", url, target, done)
    return target


def pull_model(
    name: str, *, url: str | None = None, progress: Progress | None = None
) -> ModelStatus:
    """Download a model and install it as ``name``, checked like ``models import``.

    The file comes from ``url`` when given, else from the manifest entry's ``source``. When
    the manifest publishes a SHA-256 for the model, the download must match it. An
    interrupted pull resumes on the next call with the same URL.

    Args:
        name: a manifest model (``e2``) or a name of the user's own (then ``url`` is needed).
        url: where to download from, instead of the manifest's source.
        progress: as for :func:`download`.

    Returns:
        The installed model's status (installed and verified).

    Raises:
        ModelNotInstalledError: the manifest knows no download for this model and no
            ``url`` was given (the hint says where to get it and how to import it).
        InvalidOptionError: a name the manifest does not know, without ``url``.
        DataCorruptedError: the download does not match the published SHA-256.
        InvalidFormatError: the file is not an ONNX model that honours the contract.
        InternalError: the download failed (run again to resume).
    """
    entry = load_manifest().get(name)
    source = url or (entry.source if entry is not None else "")
    if not source:
        if entry is None:
            known = ", ".join(sorted(load_manifest()))
            raise InvalidOptionError(
                f"unknown model {name!r} (the manifest names {known}); give a URL to "
                f"download your own: python -m lipsync models pull {name} --url URL"
            )
        raise ModelNotInstalledError(
            f"model {name!r} ({entry.title}) has no known download: its weights are "
            f"distributed by their authors ({entry.licence})",
            hint=f"get the file from {entry.homepage or 'its authors'}, then run "
            f"python -m lipsync models import PATH --name {name}",
        )

    # import_onnx wants an .onnx suffix; the installed file name is its own business.
    folder = models_home() / DOWNLOADS_DIR / hashlib.sha256(source.encode()).hexdigest()[:16]
    file = folder / (entry.file if entry is not None else "model.onnx")
    expected = entry.sha256 if entry is not None and entry.sha256 else None
    logger.info("pulling model %s from %s", name, source)

    # The finished download is deleted whatever the import says (a file that fails the
    # contract is no use for resuming); a .part left by a failed transfer stays for the next run.
    try:
        download(source, file, sha256=expected, progress=progress)
        return import_onnx(file, name=name)
    finally:
        file.unlink(missing_ok=True)
        _remove_empty(folder)
        _remove_empty(folder.parent)


def _check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidOptionError(f"can only download http:// or https:// URLs, got {url!r}")


def _check_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA256.fullmatch(value):
        raise InvalidOptionError(f"a SHA-256 is 64 hex digits, got {sha256!r}")
    return value


def _open(
    url: str, offset: int, timeout: float
) -> tuple[http.client.HTTPResponse, int, int | None]:
    """The response to read, the offset it starts at, and the whole file's length if known.

    A server that ignores the Range header answers 200 with the whole file, which is read
    from byte 0. One that cannot continue from ``offset`` (416, or a range that starts
    elsewhere) gets a second, plain request; either way the download starts over.
    """
    response = None
    if offset:
        try:
            response = _request(url, offset, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != 416:  # 416: the .part is already as long as the file, or longer
                raise _network_error(url, exc) from exc
            exc.close()
            logger.info("%s cannot resume from byte %d; starting over", url, offset)
        else:
            resumed = _resumed_range(response, offset)
            if resumed is not None:
                return response, offset, resumed
            if response.status != 200:
                response.close()
                response = None
            logger.info("%s did not resume from byte %d; starting over", url, offset)

    if response is None:
        try:
            response = _request(url, 0, timeout)
        except urllib.error.HTTPError as exc:
            raise _network_error(url, exc) from exc
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    return response, 0, total


def _request(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": f"lipsync/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _network_error(url, exc) from exc


def _resumed_range(response: http.client.HTTPResponse, offset: int) -> int | None:
    """The file's total length when the response continues at ``offset``; else None.

    None means the server sent something else (200 and the whole file, or another range):
    the caller starts over.
    """
    if response.status != 206:
        return None
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None or int(match.group(1)) != offset:
        return None
    if match.group(3) != "*":
        return int(match.group(3))
    return int(match.group(2)) + 1


def _receive(
    response: http.client.HTTPResponse,
    part: Path,
    offset: int,
    total: int | None,
    url: str,
    progress: Progress | None,
    chunk: int,
) -> int:
    """Append the response body to ``part`` (or overwrite it from 0); the bytes it then holds."""
    done = offset
    if progress is not None:
        progress(done, total)
    try:
        with open(part, "ab" if offset else "wb") as out:
            while block := response.read(chunk):
                out.write(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, OSError) and exc.filename is not None:
            raise InternalError(f"cannot write the download to {part}: {exc}") from exc
        raise _network_error(url, exc, done=done) from exc
    return done


def _network_error(url: str, exc: BaseException, *, done: int | None = None) -> InternalError:
    """A failure outside lipsync, said plainly; the partial file is kept for a resume."""
    if isinstance(exc, urllib.error.HTTPError):
        what = f"the server answered HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        what = f"cannot connect ({exc.reason})"
    else:
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    where = f" after {done} bytes" if done else ""
    # A refusal (404, 403) will not change on a second try; a dropped connection may.
    refused = isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500
    hint = None if refused else _RESUME_HINT
    return InternalError(f"downloading {url} failed{where}: {what}", hint=hint)


def _remove_empty(folder: Path) -> None:
    # Not empty (a .part waits to be resumed, or another pull is under way), or already gone.
    with contextlib.suppress(OSError):
        folder.rmdir()


__all__ = ["DOWNLOADS_DIR", "Progress", "download", "pull_model"]
