"""Outgoing HTTP for the shim: fetching URL assets and posting webhooks (standard library).

Both are restricted to ``http://`` and ``https://``, with a timeout on the connection and on
each read. A fetch follows redirects only to other http(s) URLs (urllib alone would also
follow one to ``ftp://``); a webhook POST follows none, since urllib turns a redirected POST
into a GET without its body.

Unless ``allow_private`` is set, every connection (redirects included) is refused when the
host resolves to an address that is not public: loopback, private, link-local (cloud
metadata services), shared, reserved or multicast. The check is made on the addresses the
socket then connects to, so a name that resolves differently the second time cannot slip
past it. Connections are direct: proxy variables are not used, since through a proxy the
target's address could not be checked.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import mimetypes
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from .. import __version__
from ..errors import InvalidOptionError
from .store import Store, UploadTooLargeError

# How to allow private addresses, for the refusal's message.
PRIVATE_HINT = "to allow them, serve with --allow-private-urls or LIPSYNC_ALLOW_PRIVATE_URLS=1"

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


class PrivateAddressError(OSError):
    """A URL's host resolves to an address that is not public, and those are not allowed."""


def check_public_host(url: str, what: str, allow_private: bool) -> None:
    """Refuse now a URL whose host resolves to a non-public address (a name that does not
    resolve yet passes: the connection itself is checked again when it is made).

    Raises:
        InvalidOptionError: the host is, or resolves to, a non-public address.
    """
    if allow_private:
        return
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return
    try:
        for *_, sockaddr in infos:
            _refuse_private(host, sockaddr[0])
    except PrivateAddressError as exc:
        message = f"the {what} URL {url} is refused: {exc}"
        raise InvalidOptionError(message, hint=PRIVATE_HINT) from None


def fetch_into(
    store: Store, url: str, limit: int, timeout: float, allow_private: bool = False
) -> tuple[Path, str]:
    """Download ``url`` into the store's upload folder, as :meth:`Store.receive` does uploads.

    Returns the received file (its suffix taken from the URL's path, else from the
    Content-Type) and its SHA-256.

    Raises:
        InvalidOptionError: not an http(s) URL, a host (or redirect) at a non-public address
            while ``allow_private`` is off, or the server or network failed.
        UploadTooLargeError: the file is larger than ``limit`` bytes (said up front by
            Content-Length, or found while reading); nothing is kept.
    """
    check_http_url(url, "asset")
    opener = _opener(_HttpOnlyRedirects, allow_private)
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
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, PrivateAddressError):
            raise InvalidOptionError(
                f"the asset URL {url} is refused: {exc.reason}", hint=PRIVATE_HINT
            ) from exc
        logger.info("could not fetch %s: %s", url, exc)
        raise InvalidOptionError(f"could not download the asset URL {url}: {exc}") from exc
    except NETWORK_ERRORS as exc:
        logger.info("could not fetch %s: %s", url, exc)
        raise InvalidOptionError(f"could not download the asset URL {url}: {exc}") from exc


def post_json(
    url: str, body: bytes, headers: dict[str, str], timeout: float, allow_private: bool = False
) -> tuple[int | None, str | None]:
    """POST ``body`` as JSON; the HTTP status (None when none came) and an error (None on 2xx).

    The response's body is not read beyond what closing the connection needs, whatever its
    size. Redirects are not followed: a 3xx is a failed attempt.

    Raises:
        PrivateAddressError: the host is at a non-public address and ``allow_private`` is off
            (trying again would not help).
    """
    opener = _opener(_NoRedirects, allow_private)
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
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, PrivateAddressError):
            raise exc.reason from exc
        return None, f"{type(exc).__name__}: {exc}"
    except NETWORK_ERRORS as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _opener(redirects: type, allow_private: bool) -> urllib.request.OpenerDirector:
    handlers: list = [urllib.request.ProxyHandler({}), redirects]
    if not allow_private:
        handlers += [_PublicHTTPHandler, _PublicHTTPSHandler]
    return urllib.request.build_opener(*handlers)


def _refuse_private(host: str, address: str) -> None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_global and not ip.is_multicast:
        return
    kind = next(
        (
            word
            for word, flag in (
                ("loopback", ip.is_loopback),
                ("link-local", ip.is_link_local),
                ("private", ip.is_private),
                ("multicast", ip.is_multicast),
            )
            if flag
        ),
        "non-public",
    )
    named = host if host == str(ip) else f"{host} ({ip})"
    raise PrivateAddressError(f"{named} is a {kind} address")


def _connect_public(address: tuple[str, int], timeout=None, source_address=None) -> socket.socket:
    """``socket.create_connection`` that first refuses hosts with a non-public address."""
    host, port = address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        _refuse_private(host, sockaddr[0])

    error: OSError | None = None
    for family, kind, proto, _name, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if isinstance(timeout, int | float):
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError(f"no address found for {host}")


class _PublicHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _connect_public


class _PublicHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _connect_public


class _PublicHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_PublicHTTPConnection, req)


class _PublicHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_PublicHTTPSConnection, req, context=self._context)


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
