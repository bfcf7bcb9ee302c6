"""The API's JSON shapes shared by the endpoints and the webhook sender."""

from __future__ import annotations

from typing import Any

from .store import FAILED, PENDING, RUNNING, SUCCESS, Request

_ASSET = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["video", "audio"]},
        "url": {"type": "string", "description": "http(s) URL of the file to fetch"},
        "asset_id": {"type": "integer", "description": "an asset kept from an earlier job"},
    },
    "required": ["type"],
}
_WEBHOOK = {
    "description": "notified when the job completes or fails: a URL, or {url, headers, params}",
    "oneOf": [
        {"type": "string"},
        {
            "type": "object",
            "properties": {
                "url": {"type": "string"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "params": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["url"],
        },
    ],
}
_MODEL = {"type": "string", "description": "generator: e1, e2 or e3"}
_FILE = {"type": "string", "format": "binary"}

# POST /visualdub reads its body itself (JSON or a form, four input modes): its OpenAPI
# description is written out here.
VISUALDUB_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "model": _MODEL,
                        "assets": {"type": "array", "items": _ASSET},
                        "options": {
                            "type": "object",
                            "properties": {
                                "intensity": {
                                    "type": "integer",
                                    "minimum": 1,
                                    "maximum": 3,
                                    "default": 2,
                                }
                            },
                        },
                        "webhook": _WEBHOOK,
                    },
                    "required": ["model"],
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "model": _MODEL,
                        "video": {**_FILE, "description": ".mp4 or .mov"},
                        "audio": {**_FILE, "description": ".wav or .mp3"},
                        "video_asset_id": {"type": "integer"},
                        "audio_asset_id": {"type": "integer"},
                        "options": {"type": "string", "description": 'JSON: {"intensity": 2}'},
                        "webhook": {"type": "string", "description": "a URL, or its JSON form"},
                    },
                    "required": ["model"],
                }
            },
        },
    }
}

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
