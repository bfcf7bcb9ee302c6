"""Where lipsync keeps results worth reusing between runs (scene lists, for now)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import platformdirs

_CHUNK = 1 << 20


def cache_dir() -> Path:
    """The cache folder: ``$LIPSYNC_HOME/cache`` if set, else the user's cache directory."""
    home = os.environ.get("LIPSYNC_HOME")
    root = Path(home) / "cache" if home else Path(platformdirs.user_cache_dir("lipsync"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes: the key that says two paths hold the same video.

    Remembered per (path, size, modification time), so the phases that each key their
    cache on it read a long video once, not once per phase.
    """
    stat = os.stat(path)
    return _digest(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def load_json(kind: str, key: str) -> Any | None:
    """A cached JSON value, or None when it is absent or unreadable (a cache never fails a run)."""
    path = cache_dir() / kind / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def store_json(kind: str, key: str, value: Any) -> None:
    """Write a JSON value atomically, so a reader never sees half a file."""
    folder = cache_dir() / kind
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / f"{key}.json", value)


def write_json_atomic(path: Path, value: Any, **dump_options: Any) -> None:
    """Write ``value`` as JSON to ``path`` atomically (see :func:`atomic_target`)."""
    with atomic_target(path) as tmp, open(tmp, "w") as handle:
        json.dump(value, handle, **dump_options)


@contextmanager
def atomic_target(path: Path) -> Iterator[str]:
    """A temporary path beside ``path`` to write; renamed onto ``path`` when the block ends
    well, deleted when it raises. A reader finds the old file or the new one, never half of
    one, and two writers of the same file each have a name of their own."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
