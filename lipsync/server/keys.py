"""API keys and their quotas: from a TOML file, the environment, or the caller.

A keys file (``serve --keys-file`` or ``LIPSYNC_API_KEYS_FILE``) lists one table per key::

    [[keys]]
    key = "team-a-secret"
    quota_seconds = 3600   # optional: seconds of video its jobs may use in all

    [[keys]]
    key = "team-b-secret"  # no quota: unlimited

``LIPSYNC_API_KEYS`` adds keys (comma-separated) and ``LIPSYNC_API_QUOTAS`` gives quotas to
keys from either source (``key=seconds``, comma-separated).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidOptionError

KEYS_ENV = "LIPSYNC_API_KEYS"
QUOTAS_ENV = "LIPSYNC_API_QUOTAS"
KEYS_FILE_ENV = "LIPSYNC_API_KEYS_FILE"


@dataclass(frozen=True)
class ApiKey:
    """One accepted key."""

    key: str  # the secret a client sends in x-api-key
    quota_seconds: float | None = None  # video seconds its jobs may use in all; None: no limit


def configured_keys(keys_file: Path | None = None) -> list[ApiKey]:
    """The keys of ``keys_file`` (default ``$LIPSYNC_API_KEYS_FILE``), then of
    ``$LIPSYNC_API_KEYS``, with the quotas of ``$LIPSYNC_API_QUOTAS`` applied.

    Raises:
        InvalidOptionError: an unreadable file, a malformed entry or quota, or a quota for a
            key that is not configured.
    """
    path = keys_file or os.environ.get(KEYS_FILE_ENV)
    found = load_keys_file(Path(path)) if path else []
    found += [ApiKey(k.strip()) for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip()]
    return with_quotas(found, _env_quotas())


def load_keys_file(path: Path) -> list[ApiKey]:
    """The ``[[keys]]`` tables of a TOML file (see the module's notes)."""
    try:
        table = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidOptionError(f"cannot read the keys file {path}: {exc}") from exc

    entries = table.get("keys", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidOptionError(f"{path}: 'keys' must be a list of [[keys]] tables")
    keys = []
    for number, entry in enumerate(entries, 1):
        key = entry.get("key")
        if not isinstance(key, str) or not key.strip():
            raise InvalidOptionError(f"{path}: keys entry {number} has no 'key' string")
        quota = entry.get("quota_seconds")
        keys.append(ApiKey(key.strip(), None if quota is None else _quota(quota, key)))
    return keys


def normalize(keys: Iterable[str | ApiKey]) -> list[ApiKey]:
    """Keys given as plain strings or :class:`ApiKey`, as ApiKey; later duplicates win."""
    chosen: dict[str, ApiKey] = {}
    for item in keys:
        entry = item if isinstance(item, ApiKey) else ApiKey(str(item))
        chosen[entry.key] = entry
    return list(chosen.values())


def with_quotas(keys: Iterable[str | ApiKey], quotas: dict[str, float]) -> list[ApiKey]:
    """``keys`` with ``quotas`` (key to seconds) set; a quota for an unknown key is an error."""
    listed = normalize(keys)
    unknown = set(quotas) - {k.key for k in listed}
    if unknown:
        raise InvalidOptionError(f"{len(unknown)} quota(s) set for keys that are not configured")
    return [ApiKey(k.key, quotas.get(k.key, k.quota_seconds)) for k in listed]


def _env_quotas() -> dict[str, float]:
    quotas = {}
    for item in os.environ.get(QUOTAS_ENV, "").split(","):
        if not item.strip():
            continue
        key, sep, seconds = item.strip().rpartition("=")
        if not sep or not key:
            raise InvalidOptionError(f"{QUOTAS_ENV} entries are key=seconds, got one without '='")
        quotas[key] = _quota(seconds, key)
    return quotas


def _quota(value: object, key: str) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds < 0:
        # The key itself is a secret: name it by its first characters only.
        raise InvalidOptionError(
            f"the quota of key {key[:3]}... must be a number of seconds >= 0, got {value!r}"
        )
    return seconds
