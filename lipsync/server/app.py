"""The FastAPI application: the hosted API's endpoints, shapes and error codes.

``create_app`` wires a :class:`Store`, a job queue with its :class:`WorkerProcesses` and a
:class:`WebhookSender` into an app under ``/neuralgarage/saas/api/v1/clients``; ``serve``
runs it with uvicorn. Clients send their key in ``x-api-key`` and see only their own assets
and requests; a key with a quota is charged the video's duration, in whole seconds, per job.
With a worker token the app also serves remote workers (:mod:`lipsync.server.workerapi`),
outside the public API and its OpenAPI document.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
from collections.abc import Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InvalidOptionError, LipsyncError, ModelNotInstalledError
from ..generators import available, known
from ..media import probe_audio, validate_video
from .jobs import JobSettings, WorkerProcesses
from .keys import ApiKey, configured_keys, normalize
from .queues import open_queue
from .remote import check_http_url, check_public_host, fetch_into
from .shapes import STATUS_WORDS, VISUALDUB_BODY, job_error, status_data
from .store import FAILED, SUCCESS, Asset, Store, UploadTooLargeError, key_id
from .uploads import ReceivedFile, read_multipart
from .webhooks import WebhookSender, WebhookSettings, load_secret, parse_webhook
from .workerapi import worker_router

logger = logging.getLogger(__name__)

BASE_PATH = "/neuralgarage/saas/api/v1/clients"

# HTTP status for each error code the library raises.
HTTP_STATUS = {
    "ERR_003": 500,
    "ERR_004": 422,
    "ERR_006": 402,
    "ERR_007": 400,
    "ERR_008": 400,
    "ERR_009": 400,
}
# SQLite's integers are 64-bit: a larger id cannot name anything.
_MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class ServerSettings:
    """Limits and job options for one server."""

    max_upload_bytes: int = 2 << 30  # one uploaded or fetched file; larger ones are refused (413)
    fetch_timeout: float = 30.0  # seconds to connect to a URL asset's server and per read
    jobs: JobSettings = field(default_factory=JobSettings)  # how the workers run dub
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)  # attempts, backoff
    allow_private_urls: bool = False  # let URL assets and webhooks reach non-public addresses
    queue: str = "sqlite"  # job-queue backend, by name (lipsync.server.queues.QUEUES)
    queue_url: str | None = None  # the backend's server, for a networked one (redis://host)
    max_output_bytes: int = 8 << 30  # one output a remote worker uploads; larger ones are refused


class ApiError(Exception):
    """A refusal that is not a library error: bad key, unknown id, malformed request."""

    def __init__(self, http_status: int, status_code: str, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status_code = status_code
        self.message = message


def default_home() -> Path:
    """``$LIPSYNC_HOME`` if set, else the user's data directory."""
    home = os.environ.get("LIPSYNC_HOME")
    return Path(home) if home else Path(platformdirs.user_data_dir("lipsync"))


def create_app(
    home: Path | None = None,
    keys: Iterable[str | ApiKey] | None = None,
    *,
    workers: int = 1,
    settings: ServerSettings | None = None,
    webhook_secret: str | None = None,
    worker_token: str | None = None,
) -> FastAPI:
    """The shim as an ASGI app; its worker processes start and stop with the app's lifespan.

    Args:
        home: where the store lives (``<home>/server``); default :func:`default_home`.
        keys: accepted API keys, as strings or :class:`ApiKey` (with a quota); default
            :func:`~lipsync.server.keys.configured_keys`. At least one is needed.
        workers: job processes (each runs one ``dub`` at a time).
        settings: limits, job and webhook options, the job-queue backend.
        webhook_secret: the key webhooks are signed with; default ``LIPSYNC_WEBHOOK_SECRET``,
            else a random one kept in ``<home>/server/webhook.secret``
            (see :mod:`lipsync.server.webhooks`).
        worker_token: the secret remote workers send to the worker endpoints
            (:mod:`lipsync.server.workerapi`); default ``LIPSYNC_WORKER_TOKEN``. Without one
            those endpoints do not exist.

    Raises:
        InvalidOptionError: no API key is configured, ``workers`` is below 1 with the
            embedded queue (or negative), the queue backend is unknown, or a networked
            queue has no worker token.
    """
    accepted = normalize(keys) if keys is not None else configured_keys()
    if not accepted:
        raise InvalidOptionError(
            "no API key configured",
            hint="set LIPSYNC_API_KEYS=key1,key2 or LIPSYNC_API_KEYS_FILE, or pass keys=",
        )
    settings = settings or ServerSettings()
    # With the embedded queue, local processes are the only workers; with a networked one
    # the workers may all be elsewhere.
    least = 1 if settings.queue == "sqlite" else 0
    if workers < least:
        raise InvalidOptionError(f"workers must be at least {least}, got {workers}")
    token = worker_token if worker_token is not None else os.environ.get("LIPSYNC_WORKER_TOKEN")
    if settings.queue != "sqlite" and not token:
        raise InvalidOptionError(
            f"the {settings.queue} job queue needs a worker token for its remote workers",
            hint="set LIPSYNC_WORKER_TOKEN to a long random secret, here and on each worker",
        )

    store = Store(home or default_home())
    quotas = {key_id(k.key): k.quota_seconds for k in accepted}
    backend: dict[str, Any] = {"home": str(store.root.parent)}
    if settings.queue_url is not None:
        backend["url"] = settings.queue_url
    queue = open_queue(settings.queue, **backend)
    pool = WorkerProcesses(queue, workers, settings.jobs)
    secret = load_secret(store.root, webhook_secret)
    sender = WebhookSender(store, secret, settings.webhooks, settings.allow_private_urls)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        store.clear_uploads()
        pool.start()
        sender.start()
        try:
            yield
        finally:
            await run_in_threadpool(pool.stop)
            await run_in_threadpool(sender.stop)

    app = FastAPI(title="lipsync REST shim", lifespan=lifespan)
    app.state.store = store
    app.state.pool = pool
    app.state.webhooks = sender
    _install_error_handlers(app)
    if token:
        app.include_router(worker_router(store, token, settings.max_output_bytes))

    def client(x_api_key: str | None = Header(default=None)) -> str:
        if x_api_key and any(hmac.compare_digest(x_api_key, k.key) for k in accepted):
            return key_id(x_api_key)
        raise ApiError(401, "unauthorized", "Missing or invalid API key (header x-api-key)")

    @app.post(BASE_PATH + "/visualdub", status_code=201, openapi_extra=VISUALDUB_BODY)
    async def visualdub(request: Request, key: str = Depends(client)) -> JSONResponse:
        job = await _parse_job(request, key, store, settings)

        # Whole seconds of the video, recorded for every job, checked against a quota if any.
        seconds = float(math.ceil(await run_in_threadpool(_duration, store, job["video"])))
        quota = quotas.get(key)
        created = await run_in_threadpool(
            store.create_request,
            key,
            job["model"],
            job["intensity"],
            job["video"].id,
            job["audio"].id,
            job["webhook"],
            seconds=seconds,
            quota=quota,
        )
        await run_in_threadpool(queue.enqueue, created.request_id)
        pool.notify()

        credits: dict[str, Any] = {"credits_deducted": 0 if quota is None else int(seconds)}
        if quota is not None:
            used = await run_in_threadpool(store.used_seconds, key)
            credits["credits_remaining"] = int(max(quota - used, 0))
        data = {
            "request_id": created.request_id,
            "assets": [
                {"type": "video", "asset_id": job["video"].id},
                {"type": "audio", "asset_id": job["audio"].id},
            ],
            "credit_details": credits,
        }
        return JSONResponse({"status": "success", "message": "Job Created", "data": data}, 201)

    @app.get(BASE_PATH + "/get_status")
    def get_status(request_id: str = Query(...), key: str = Depends(client)) -> dict:
        job = _owned_request(store, key, request_id)
        data = status_data(job)
        return {"status": "success", "message": "Request status fetched", "data": data}

    @app.get(BASE_PATH + "/get_file", response_model=None)
    def get_file(
        request_id: str = Query(...), key: str = Depends(client)
    ) -> FileResponse | JSONResponse | dict:
        job = _owned_request(store, key, request_id)
        if job.status == FAILED:
            error = job_error(job)
            return _failed(HTTP_STATUS.get(job.error_code, 500), error["message"], error)
        if job.status != SUCCESS or job.output is None:
            data = {
                "request_id": job.request_id,
                "status": "in_progress",
                "status_code": 102,
                "message": "Job is still processing. Please try again later.",
            }
            return {"status": "success", "data": data}
        # Starlette's FileResponse streams the file and answers Range requests (206).
        return FileResponse(job.output, media_type="video/mp4", filename="output.mp4")

    @app.get(BASE_PATH + "/list_requests")
    def list_requests(
        limit: int = Query(10, ge=1, le=1000),
        page_no: int = Query(0, ge=0, le=_MAX_ID // 1000),
        key: str = Depends(client),
    ) -> dict:
        rows, total = store.list_requests(key, limit, page_no * limit)
        data = []
        for job in rows:
            status, code = STATUS_WORDS[job.status]
            data.append(
                {
                    "request_id": job.request_id,
                    "status": status,
                    "status_code": code,
                    "created_at": job.created_at,
                    "completed_at": job.completed_at,
                }
            )
        return {
            "status": "success",
            "message": "Requests listed",
            "data": data,
            "total_requests": total,
            "end_of_records": (page_no + 1) * limit >= total,
        }

    @app.get(BASE_PATH + "/list_assets")
    def list_assets(key: str = Depends(client)) -> dict:
        data = [_asset_json(a) for a in store.list_assets(key)]
        return {"status": "success", "message": "Assets listed", "data": data}

    @app.get(BASE_PATH + "/get_asset")
    def get_asset(asset_id: int = Query(..., ge=0, le=_MAX_ID), key: str = Depends(client)) -> dict:
        asset = store.get_asset(key, asset_id)
        if asset is None:
            raise ApiError(404, "not_found", "Asset not found")
        return {"status": "success", "message": "Asset Fetched", "data": _asset_json(asset)}

    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    *,
    keys_file: Path | None = None,
    allow_private_urls: bool = False,
    queue: str = "sqlite",
    queue_url: str | None = None,
    jobs: JobSettings | None = None,
) -> None:
    """Run the shim with uvicorn until interrupted.

    Keys come from ``keys_file`` and the environment (:func:`~lipsync.server.keys.
    configured_keys`); ``allow_private_urls`` lets URL assets and webhooks reach loopback,
    private and link-local addresses; ``queue`` and ``queue_url`` choose the job-queue
    backend (``"redis"``, ``"redis://host:6379"``) and ``jobs`` how its jobs are watched.
    """
    import uvicorn

    settings = ServerSettings(
        allow_private_urls=allow_private_urls,
        queue=queue,
        queue_url=queue_url,
        jobs=jobs or JobSettings(),
    )
    app = create_app(keys=configured_keys(keys_file), workers=workers, settings=settings)
    uvicorn.run(app, host=host, port=port, log_level="info")


# --- request parsing ----------------------------------------------------------------------


async def _parse_job(request: Request, key: str, store: Store, settings: ServerSettings) -> dict:
    """Model, intensity, webhook and the two assets of a POST /visualdub, in any input mode."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        # File parts go straight into the store, each under max_upload_bytes; the body as a
        # whole is capped too, so no stream of small parts can run on for ever.
        limit = _body_limit(settings)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise UploadTooLargeError(_too_large(limit))
        capped = Request(request.scope, receive=_capped_receive(request.receive, limit))
        fields = await read_multipart(
            capped.stream(), content_type, store, settings.max_upload_bytes
        )
    elif content_type.startswith("application/x-www-form-urlencoded"):
        form = await request.form()  # text only: no file can come this way
        fields = {name: value for name, value in form.items()}
    elif content_type.startswith("application/json") or not content_type:
        try:
            fields = await request.json()
        except ValueError:
            raise ApiError(400, "invalid_request", "The body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise ApiError(400, "invalid_request", "The body must be a JSON object")
    else:
        raise ApiError(
            400, "invalid_request", "Send application/json or a form (multipart or urlencoded)"
        )

    try:
        return await _job_fields(fields, key, store, settings)
    finally:
        # A received file is kept (moved) by its asset, or refused and deleted; any other
        # (the job was refused first) goes now.
        for value in fields.values():
            if isinstance(value, ReceivedFile):
                value.path.unlink(missing_ok=True)


async def _job_fields(fields: dict, key: str, store: Store, settings: ServerSettings) -> dict:
    """The job from its parsed fields (see _parse_job)."""
    model = await run_in_threadpool(_model, fields.get("model"))
    intensity = _intensity(fields)
    webhook = _webhook(fields.get("webhook"))
    if webhook is not None:
        url = json.loads(webhook)["url"]
        await run_in_threadpool(check_public_host, url, "webhook", settings.allow_private_urls)

    chosen: dict[str, Asset] = {}
    for media_type in ("video", "audio"):
        chosen[media_type] = await _asset_for(media_type, fields, key, store, settings)
    return {"model": model, "intensity": intensity, "webhook": webhook, **chosen}


async def _asset_for(
    media_type: str, fields: dict, key: str, store: Store, settings: ServerSettings
) -> Asset:
    """The asset of one type: an uploaded file, a form asset id, or an entry of ``assets``."""
    upload = fields.get(media_type)
    if isinstance(upload, ReceivedFile):
        name = upload.filename or media_type
        return await run_in_threadpool(
            _check_and_keep, upload.path, upload.sha256, name, media_type, key, store, settings
        )

    asset_id = fields.get(f"{media_type}_asset_id")
    if asset_id is None:
        for entry in _assets_list(fields.get("assets")):
            if entry.get("type") != media_type:
                continue
            if entry.get("url") is not None and entry.get("asset_id") is None:
                url = check_http_url(entry["url"], media_type)
                return await run_in_threadpool(_fetch_url, url, media_type, key, store, settings)
            asset_id = entry.get("asset_id")
    if asset_id is None:
        raise ApiError(400, "invalid_request", f"No {media_type} given (file, asset id or url)")

    number = _asset_number(asset_id, media_type)
    asset = None if number > _MAX_ID else await run_in_threadpool(store.get_asset, key, number)
    if asset is None or asset.media_type != media_type:
        raise ApiError(404, "not_found", f"Asset not found: {media_type} asset {number}")
    return asset


def _fetch_url(
    url: str, media_type: str, key: str, store: Store, settings: ServerSettings
) -> Asset:
    """Download, check and keep one URL asset (blocking: runs in a worker thread)."""
    received, sha256 = fetch_into(
        store, url, settings.max_upload_bytes, settings.fetch_timeout, settings.allow_private_urls
    )
    return _check_and_keep(received, sha256, url, media_type, key, store, settings)


def _check_and_keep(
    received: Path,
    sha256: str,
    name: str,
    media_type: str,
    key: str,
    store: Store,
    settings: ServerSettings,
) -> Asset:
    """Validate a received file like any upload, then keep it as an asset (or delete it)."""
    try:
        info = _probe(media_type)(received, max_duration=settings.jobs.max_duration)
    except LipsyncError as exc:
        received.unlink(missing_ok=True)
        logger.info("refused a %s upload: %s", media_type, exc)
        # The library's message names the temporary file; name the client's file instead.
        named = exc.message.replace(received.name, repr(name))
        raise type(exc)(f"{media_type} upload: {named}", hint=exc.hint) from exc
    return store.add_asset(key, media_type, received, sha256, info.duration)


def _duration(store: Store, asset: Asset) -> float:
    """An asset's duration in seconds (measured now for one kept before durations were)."""
    if asset.duration is not None:
        return asset.duration
    duration = _probe(asset.media_type)(asset.path).duration
    store.set_duration(asset.id, duration)
    return duration


def _probe(media_type: str):
    """The library's check of one media type: it raises the API's errors for a bad file."""
    return validate_video if media_type == "video" else probe_audio


def _body_limit(settings: ServerSettings) -> int:
    """Bytes a multipart POST may carry: two files at the limit, and room for the fields."""
    return 2 * settings.max_upload_bytes + (1 << 20)


def _too_large(limit: int) -> str:
    return f"the request body is larger than the limit of {limit} bytes (two files and fields)"


def _capped_receive(receive, limit: int):
    """``receive`` that raises UploadTooLargeError once more than ``limit`` body bytes came."""
    seen = 0

    async def capped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise UploadTooLargeError(_too_large(limit))
        return message

    return capped


def _asset_number(value: Any, media_type: str) -> int:
    """An asset id from JSON or a form field: a non-negative integer (not a bool or a float)."""
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.isascii() and text.isdigit():
        return int(text)
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    raise ApiError(400, "invalid_request", f"{media_type} asset id must be an integer")


def _assets_list(value: Any) -> list[dict]:
    if value is None:
        return []
    if isinstance(value, str):  # a form field carrying JSON
        try:
            value = json.loads(value)
        except ValueError:
            raise ApiError(400, "invalid_request", "assets must be a JSON array") from None
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise ApiError(400, "invalid_request", "assets must be an array of objects")
    return value


def _model(value: Any) -> str:
    """The job's model; a neural one must have its weights installed (checked now, so the
    client is told how to bring them rather than handed a job that can only fail)."""
    if value is None:
        raise ApiError(400, "invalid_request", "model is required (e.g. e1)")
    names = known()
    if value not in names:
        raise ApiError(400, "invalid_request", f"Unknown model {value!r}; known: {names}")
    if value not in available():
        from ..models import require_model

        try:
            require_model(value)
        except ModelNotInstalledError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
    return value


def _intensity(fields: dict) -> int:
    options = fields.get("options")
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except ValueError:
            raise ApiError(400, "invalid_request", "options must be a JSON object") from None
    raw = fields.get("intensity", 2)
    if isinstance(options, dict):
        raw = options.get("intensity", raw)
    elif options is not None:
        raise ApiError(400, "invalid_request", "options must be an object")
    try:
        intensity = int(raw)
    except (TypeError, ValueError):
        intensity = 0
    if intensity not in (1, 2, 3) or isinstance(raw, bool):
        raise ApiError(400, "invalid_request", f"options.intensity must be 1, 2 or 3, got {raw!r}")
    return intensity


def _webhook(value: Any) -> str | None:
    """The webhook as JSON text ``{url, headers, params}``, from a URL string or an object."""
    if value is None or value == "":
        return None
    return json.dumps(asdict(parse_webhook(value)))


# --- responses ----------------------------------------------------------------------------


def _owned_request(store: Store, key: str, request_id: str):
    job = store.get_request(key, request_id)
    if job is None:
        raise ApiError(404, "not_found", "Request ID not found")
    return job


def _asset_json(asset: Asset) -> dict:
    return {"asset_id": asset.id, "media_type": asset.media_type}


def _failed(http_status: int, message: str, data: dict | None = None, **extra) -> JSONResponse:
    body: dict[str, Any] = {"status": "failed", "message": message, **extra}
    if data is not None:
        body["data"] = data
    return JSONResponse(body, http_status)


def _install_error_handlers(app: FastAPI) -> None:
    """Every refusal answers in the API's failure shape, never FastAPI's default one."""

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _failed(exc.http_status, exc.message, status_code=exc.status_code)

    @app.exception_handler(LipsyncError)
    async def library_error(_request: Request, exc: LipsyncError) -> JSONResponse:
        if isinstance(exc, InvalidOptionError):
            return _failed(400, str(exc), exc.to_dict(), status_code="invalid_request")
        if isinstance(exc, UploadTooLargeError):
            return _failed(413, str(exc), exc.to_dict())
        return _failed(HTTP_STATUS.get(exc.code, 500), str(exc), exc.to_dict())

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors()
        )
        return _failed(400, f"Invalid request: {problems}", status_code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        word = {401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(
            exc.status_code, "invalid_request"
        )
        return _failed(exc.status_code, str(exc.detail), status_code=word)
