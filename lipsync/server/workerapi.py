"""The shim's endpoints for remote job workers: ping, claim, renew, progress, inputs, output,
fail.

A worker on another machine (:mod:`lipsync.server.remoteworker`) has no share of the shim's
disk: it downloads a claimed job's video and audio from here and uploads the finished MP4
back. These endpoints are not part of the public API: they live under :data:`WORKER_PATH`,
stay out of the OpenAPI document, and answer only requests that carry the worker secret
(``LIPSYNC_WORKER_TOKEN``) as a bearer token.

A claim made here records its owner with :data:`~lipsync.server.queues.REMOTE_OWNER` in
front, so the shim's monitor judges it by its lease alone. Every later call names that owner
and lands only while the owner still holds the claim; a lost claim answers 409, which tells
the worker to drop its work. An uploaded output is streamed to a temporary file under a size
limit, checked as a video, moved into place in one rename, and recorded under the same
owner check, so a request completes once, with a whole file.
"""

from __future__ import annotations

import hmac
import logging
import os
import tempfile
import time
from pathlib import Path

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from ..errors import LipsyncError
from ..media import validate_video
from .queues import REMOTE_OWNER, WORKER_PATH, WorkerId
from .store import Store, UploadTooLargeError

logger = logging.getLogger(__name__)

MAX_LEASE = 3600.0  # seconds; a worker renews long before, so a longer lease only hides a death


class ClaimBody(BaseModel):
    worker: str = Field(max_length=300)  # str(WorkerId) of the claiming process
    lease: float = Field(gt=0, le=MAX_LEASE)  # seconds the claim holds without renewal
    request_id: str | None = Field(default=None, max_length=64)  # None: the oldest waiting


class RenewBody(BaseModel):
    owner: str = Field(max_length=320)
    lease: float = Field(gt=0, le=MAX_LEASE)


class ProgressBody(BaseModel):
    owner: str = Field(max_length=320)
    phase: str = Field(max_length=64)
    percent: float = Field(ge=0, le=100)


class FailBody(BaseModel):
    owner: str = Field(max_length=320)
    code: str = Field(pattern=r"^ERR_\d{3}$")
    name: str = Field(max_length=64)
    message: str = Field(max_length=4000)


def worker_router(store: Store, token: str, max_output_bytes: int) -> APIRouter:
    """The worker endpoints over ``store``, open to requests that carry ``token``."""
    from .app import ApiError

    def authorized(authorization: str | None = Header(default=None)) -> None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "unauthorized", "Missing or invalid worker token")

    def lost(request_id: str, owner: str) -> Exception:
        return ApiError(409, "claim_lost", f"request {request_id} is not held by {owner}")

    def held(request_id: str, owner: str):
        job = store.held(request_id, owner)
        if job is None:
            raise lost(request_id, owner)
        return job

    def keep_output(received: Path, request_id: str, attempt: int, owner: str) -> None:
        target = store.output_path(request_id, attempt)
        os.replace(received, target)
        if not store.finish(request_id, target, owner=owner):
            target.unlink(missing_ok=True)
            raise lost(request_id, owner)

    router = APIRouter(
        prefix=WORKER_PATH, include_in_schema=False, dependencies=[Depends(authorized)]
    )

    @router.get("/ping")
    def ping() -> dict:
        return {"status": "success"}  # a worker starting checks its address and token here

    @router.post("/claim")
    def claim(body: ClaimBody) -> dict:
        worker = WorkerId.parse(body.worker)
        if worker is None:
            raise ApiError(400, "invalid_request", "worker must read host/pid/start")
        owner = REMOTE_OWNER + str(worker)
        lease_until = time.time() + body.lease
        if body.request_id is None:
            job = store.claim_next(owner, lease_until)
        else:
            job = store.claim_request(body.request_id, owner, lease_until)
        if job is None:
            return {"claim": None}

        logger.info("request %s: claimed by %s (attempt %d)", job.request_id, owner, job.attempts)
        video, audio = store.asset_path(job.video_asset), store.asset_path(job.audio_asset)
        return {
            "claim": {
                "request_id": job.request_id,
                "model": job.model,
                "intensity": job.intensity,
                "owner": owner,
                "attempt": job.attempts,
                "video_asset": job.video_asset,
                "audio_asset": job.audio_asset,
            },
            "suffixes": {"video": video.suffix, "audio": audio.suffix},
        }

    @router.post("/jobs/{request_id}/renew")
    def renew(request_id: str, body: RenewBody) -> dict:
        if not store.renew(request_id, body.owner, time.time() + body.lease):
            raise lost(request_id, body.owner)
        return {"status": "success"}

    @router.post("/jobs/{request_id}/progress")
    def progress(request_id: str, body: ProgressBody) -> dict:
        if not store.set_progress(request_id, body.phase, body.percent, owner=body.owner):
            raise lost(request_id, body.owner)
        return {"status": "success"}

    @router.get("/jobs/{request_id}/inputs/{kind}", response_model=None)
    def inputs(request_id: str, kind: str, owner: str = Query(max_length=320)) -> FileResponse:
        job = held(request_id, owner)
        if kind not in ("video", "audio"):
            raise ApiError(404, "not_found", f"no input named {kind!r}")
        asset = job.video_asset if kind == "video" else job.audio_asset
        return FileResponse(store.asset_path(asset))

    @router.put("/jobs/{request_id}/output")
    async def output(request: Request, request_id: str, owner: str = Query(max_length=320)):
        # The store and the file moves block: they run in worker threads, off the event loop.
        job = await run_in_threadpool(held, request_id, owner)
        received = await _receive(request, store.upload_dir, max_output_bytes)
        try:
            await run_in_threadpool(validate_video, received)
        except LipsyncError:
            received.unlink(missing_ok=True)
            raise

        await run_in_threadpool(keep_output, received, request_id, job.attempts, owner)
        logger.info("request %s: output received from %s", request_id, owner)
        return {"status": "success"}

    @router.post("/jobs/{request_id}/fail")
    def fail(request_id: str, body: FailBody) -> dict:
        if not store.fail(request_id, body.code, body.name, body.message, owner=body.owner):
            raise lost(request_id, body.owner)
        logger.info("request %s: failed on %s: %s", request_id, body.owner, body.code)
        return {"status": "success"}

    return router


async def _receive(request: Request, folder: Path, limit: int) -> Path:
    """Stream a request body into a new ``.mp4`` file in ``folder``, refusing past ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLargeError(f"the output is larger than the limit of {limit} bytes")

    fd, name = tempfile.mkstemp(dir=folder, suffix=".mp4")
    size = 0
    try:
        with os.fdopen(fd, "wb") as sink:
            async for block in request.stream():
                size += len(block)
                if size > limit:
                    raise UploadTooLargeError(
                        f"the output is larger than the limit of {limit} bytes"
                    )
                await run_in_threadpool(sink.write, block)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)
