"""The API's JSON shapes shared by the endpoints and the webhook sender."""

from __future__ import annotations

from typing import Any

from .store import FAILED, PENDING, RUNNING, SUCCESS, Request

# The API's (status, status_code) words for each stored state.
STATUS_WORDS = {
    PENDING: ("Pending", "pending"),
    RUNNING: ("In Progress", "in_progress"),
    SUCCESS: ("Success", "success"),
    FAILED: ("Failed", "failed"),
}


def status_data(job: Request) -> dict[str, Any]:
    """The ``data`` object of GET /get_status for one request (phase and progress added)."""
    status, code = STATUS_WORDS[job.status]
    data: dict[str, Any] = {
        "request_id": job.request_id,
        "status": status,
        "status_code": code,
        "assets": {"video": job.video_asset, "audio": job.audio_asset},
        "phase": job.phase,
        "progress": job.progress,
    }
    if job.status == FAILED:
        data["error"] = job_error(job)
    return data


def job_error(job: Request) -> dict[str, str | None]:
    """A failed request's error as the API reports it: code, name and message."""
    return {
        "error_code": job.error_code,
        "error_name": job.error_name,
        "message": job.error_message,
    }
