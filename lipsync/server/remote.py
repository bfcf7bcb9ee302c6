"""Outgoing HTTP for the shim: fetching URL assets and posting webhooks (standard library).

Both are restricted to ``http://`` and ``https://``, with a timeout on the connection and on
each read. A fetch follows redirects only to other http(s) URLs (urllib alone would also
follow one to ``ftp://``); a webhook POST follows none, since urllib turns a redirected POST
into a GET without its body.
"""

from __future__ import annotations

import http.client
import logging
import mimetypes
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from .. import __version__
from ..errors import InvalidOptionError
from .store import Store, UploadTooLargeError

logger = logging.getLogger(__name__)

_USER_AGENT = f"lipsync-server/{__version__}"
# Exceptions that mean "the other side or the network failed" (HTTPError is a URLError).
NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)


def check_http_url(url: object, what: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host; InvalidOptionError otherwise."""
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidOptionError(f"the {what} URL must be an http:// or https:// URL, got {url!r}")
    return url


def fetch_into(store: Store, url: str, limit: int, timeout: float) -> tuple[Path, str]:
    """Download ``url`` into the store's upload folder, as :meth:`Store.receive` does uploads.

    Returns the received file (its suffix taken from the URL's path, else from the
    Content-Type) and its SHA-256.

    Raises:
        InvalidOptionError: not an http(s) URL, or the server or network failed.
        UploadTooLargeError: the file is larger than ``limit`` bytes (said up front by
            Content-Length, or found while reading); nothing is kept.
    """
    check_http_url(url, "asset")
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with opener.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > limit:
                raise UploadTooLargeError(
                    f"the file at {url} is {length} bytes, over the limit of {limit} bytes",
                    hint="send a shorter or more compressed file",
                )
            suffix = _suffix(response.geturl(), response.headers.get_content_type())
            return store.receive(response, suffix, limit)
    except NETWORK_ERRORS as exc:
        logger.info("could not fetch %s: %s", url, exc)
        raise InvalidOptionError(f"could not download the asset URL {url}: {exc}") from exc


def post_json(
    url: str, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int | None, str | None]:
    """POST ``body`` as JSON; the HTTP status (None when none came) and an error (None on 2xx).

    The response's body is not read beyond what closing the connection needs, whatever its
    size. Redirects are not followed: a 3xx is a failed attempt.
    """
    opener = urllib.request.build_opener(_NoRedirects)
    request = urllib.request.Request(url, data=body, method="POST")
    for name, value in {"User-Agent": _USER_AGENT, **headers}.items():
        request.add_header(name, value)
    request.add_header("Content-Type", "application/json")
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, None
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, f"HTTP {exc.code}"
    except NETWORK_ERRORS as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _suffix(url: str, content_type: str) -> str:
    suffix = PurePosixPath(urllib.parse.urlsplit(url).path).suffix.lower()
    if suffix:
        return suffix
    # No extension in the URL: the media checks need one, so go by the declared type.
    return mimetypes.guess_extension(content_type) or ""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise urllib.error.HTTPError(
                newurl, code, f"redirect to a non-http(s) URL: {newurl}", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx status
