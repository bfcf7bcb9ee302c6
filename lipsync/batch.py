"""Batch runs: dub a list of (video, audio, output) items, resumably.

A list is a CSV file (a header with ``video,audio,output``, then any option columns named
after :class:`~lipsync.pipeline.DubOptions` fields), a JSONL file (one object per line with
the same keys), or a folder whose file names pair the voices with the videos (see
:func:`read_folder`). Items that share a video run one after another in the same worker, so the
video's scenes and faces are computed once and read from the cache for the rest. An item
whose output is already a readable video is skipped, so a run cut short can simply be
started again.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import time
import typing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .cache import write_json_atomic
from .errors import InternalError, InvalidOptionError, LipsyncError
from .media import VIDEO_EXTENSIONS, PathLike, probe_video
from .pipeline import DubOptions, dub

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("video", "audio", "output")
STATUSES = ("ok", "skipped", "failed")

# progress(done, total, result): called once per finished item, in the parent process.
BatchProgress = Callable[[int, int, "ItemResult"], None]
# item_progress(index, phase, done, total): the item under way, as dub() reports its phases.
ItemProgress = Callable[[int, str, int, int], None]

# Folder mode: the voices a folder may hold, and what may join a video's name to a voice's tag.
VOICE_EXTENSIONS = (".wav", ".mp3")
NAME_SEPARATORS = "._-"
DUBBED_FOLDER = "dubbed"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class BatchItem:
    """One dub to do."""

    video: Path  # source video, absolute
    audio: Path  # new voice, absolute
    output: Path  # where the dubbed video goes, absolute
    options: dict[str, Any] = field(default_factory=dict)  # DubOptions fields for this item
    line: int = 0  # line of the list file it came from (1-based; 0 when built in code)


@dataclass
class ItemResult:
    """What happened to one item."""

    index: int  # position in the item list
    video: str  # the item's paths, as strings for the JSON summary
    audio: str
    output: str
    status: str  # "ok", "skipped" or "failed"
    error_code: str | None = None  # the hosted API's code (ERR_008, ...) when failed
    error_name: str | None = None  # the hosted API's name (INVALID_FORMAT, ...) when failed
    message: str | None = None  # the error, for a person
    seconds: float = 0.0  # wall time spent on the item
    timings: dict[str, float] = field(default_factory=dict)  # dub's seconds per phase
    scenes_from_cache: bool = False
    faces_from_cache: bool = False


@dataclass
class BatchSummary:
    """Every item's result, in list order, and the counts."""

    items: list[ItemResult]  # in the order of the list
    seconds: float  # wall time of the whole run

    def count(self, status: str) -> int:
        """How many items ended with ``status``."""
        return sum(item.status == status for item in self.items)

    @property
    def failed(self) -> bool:
        """Whether any item failed."""
        return self.count("failed") > 0

    def to_dict(self) -> dict:
        """The summary as written to the JSON file."""
        counts = {status: self.count(status) for status in STATUSES}
        return {
            "total": len(self.items),
            **counts,
            "seconds": round(self.seconds, 3),
            "items": [asdict(item) for item in self.items],
        }


def read_list(path: PathLike, options: dict[str, Any] | None = None) -> list[BatchItem]:
    """Read a CSV (``.csv``) or JSONL (``.jsonl``/``.json``) batch list, or a folder.

    Relative paths are taken from the list's own folder. Empty CSV cells leave an option at
    its default. Every row is checked before anything runs. A folder is read by
    :func:`read_folder`.

    Args:
        path: the list file or folder.
        options: DubOptions fields for every item; a row's own columns take precedence.

    Raises:
        InvalidOptionError: the file cannot be read, a row lacks a required column, has an
            unknown option or a bad value; the message names the line.
    """
    path = Path(path)
    if path.is_dir():
        return read_folder(path, options=options)

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidOptionError(f"cannot read the batch list {path}: {exc}") from exc

    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(text, path)
    elif suffix in (".jsonl", ".json"):
        rows = _jsonl_rows(text, path)
    else:
        raise InvalidOptionError(f"a batch list must be .csv or .jsonl, got {path.name}")

    items = [_item({**(options or {}), **row}, line, path) for line, row in rows]
    if not items:
        raise InvalidOptionError(f"the batch list {path} has no items")
    return items


def read_folder(
    folder: PathLike, output_dir: PathLike | None = None, options: dict[str, Any] | None = None
) -> list[BatchItem]:
    """Pair the videos and voices of one folder by their names.

    A voice (``.wav``/``.mp3``) belongs to the video whose name it starts with, followed by
    ``.``, ``_`` or ``-`` and a tag: ``episode1.mp4`` takes ``episode1.fr.wav`` and
    ``episode1_de.mp3``; when several videos fit, the longest name wins. Each pair is dubbed
    to ``OUTPUT_DIR/<voice name>.mp4`` (default: the folder's ``dubbed`` subfolder), so one
    video with ten voices gives ten outputs. Only the folder's own files are read.

    Raises:
        InvalidOptionError: not a folder, no pair found, or a bad option.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise InvalidOptionError(f"{folder} is not a folder")
    output_dir = folder / DUBBED_FOLDER if output_dir is None else Path(output_dir).resolve()

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    videos = [p for p in files if p.suffix.lower() in VIDEO_EXTENSIONS]
    voices = [p for p in files if p.suffix.lower() in VOICE_EXTENSIONS]

    # Longest names first, so "ep1_extra.mp4" claims "ep1_extra.fr.wav" before "ep1.mp4" can.
    by_length = sorted(videos, key=lambda p: len(p.stem), reverse=True)
    rows = []
    for voice in voices:
        video = next((v for v in by_length if _names_voice(v.stem, voice.stem)), None)
        if video is None:
            logger.warning("%s matches no video in %s: left out", voice.name, folder)
            continue
        output = output_dir / f"{voice.stem}.mp4"
        rows.append((voice, {**(options or {}), "video": video, "audio": voice, "output": output}))

    if not rows:
        raise InvalidOptionError(
            f"no video and voice pairs in {folder}",
            hint="name each voice after its video: talk.mp4 with talk.fr.wav, talk_de.mp3, ...",
        )
    return [_item(row, 0, folder, where=voice.name) for voice, row in rows]


def _names_voice(video_stem: str, voice_stem: str) -> bool:
    """Whether a voice's name is the video's name, a separator, then a non-empty tag."""
    rest = voice_stem[len(video_stem) :]
    return voice_stem.startswith(video_stem) and len(rest) > 1 and rest[0] in NAME_SEPARATORS


def run_batch(
    items: Sequence[BatchItem],
    *,
    jobs: int | None = None,
    progress: BatchProgress | None = None,
    item_progress: ItemProgress | None = None,
    summary_path: PathLike | None = None,
) -> BatchSummary:
    """Dub every item; a failed item is recorded and the others go on.

    Args:
        items: from :func:`read_list` or built in code.
        jobs: worker processes, each taking one video's items at a time. None or 1 runs
            everything in this process (face analysis already uses every core).
        progress: called as ``progress(done, total, result)`` after each item; with
            several jobs, a video's items are reported together when it finishes.
        item_progress: called as ``item_progress(index, phase, done, total)`` while an item
            is dubbed (``dub``'s phases); only when items run in this process (one job).
        summary_path: where to write the summary as JSON (atomically); None writes none.

    Returns:
        A BatchSummary in the order of ``items``.
    """
    jobs = 1 if jobs is None else jobs
    if jobs < 1:
        raise InvalidOptionError(f"jobs must be at least 1, got {jobs}")
    started = time.perf_counter()
    groups = group_by_video(items)
    results: list[ItemResult | None] = [None] * len(items)
    done = 0

    def record(result: ItemResult) -> None:
        nonlocal done
        results[result.index] = result
        done += 1
        if progress is not None:
            progress(done, len(items), result)

    logger.info("batch of %d item(s), %d video(s), %d job(s)", len(items), len(groups), jobs)
    if jobs == 1 or len(groups) == 1:
        for group in groups:
            for index, item in group:
                record(run_item(index, item, item_progress))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(groups)), mp_context=context) as pool:
            futures = [pool.submit(_run_group, group) for group in groups]
            for future in as_completed(futures):
                for result in future.result():
                    record(result)

    summary = BatchSummary(items=[r for r in results if r is not None], seconds=0.0)
    summary.seconds = time.perf_counter() - started
    if summary_path is not None:
        write_summary(summary, summary_path)
    return summary


def group_by_video(items: Sequence[BatchItem]) -> list[list[tuple[int, BatchItem]]]:
    """(index, item) pairs grouped by source video, groups in order of first appearance."""
    groups: dict[Path, list[tuple[int, BatchItem]]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.video.resolve(), []).append((index, item))
    return list(groups.values())


def run_item(index: int, item: BatchItem, progress: ItemProgress | None = None) -> ItemResult:
    """Dub one item, or skip it when its output is already a valid video; never raises a
    LipsyncError (it is recorded in the result). ``progress`` follows its phases."""
    result = ItemResult(index, str(item.video), str(item.audio), str(item.output), "ok")
    tick = time.perf_counter()
    if output_complete(item.output):
        logger.info("skipping %s: %s already exists", item.video.name, item.output)
        result.status = "skipped"
        return result

    try:
        item.output.parent.mkdir(parents=True, exist_ok=True)
        phases = None
        if progress is not None:
            phases = lambda phase, done, total: progress(index, phase, done, total)  # noqa: E731
        dubbed = dub(item.video, item.audio, output=item.output, progress=phases, **item.options)
    except LipsyncError as exc:
        logger.warning("item %d (%s) failed: %s %s", index, item.video.name, exc.code, exc)
        result.status = "failed"
        result.error_code, result.error_name, result.message = exc.code, exc.name, str(exc)
    except OSError as exc:  # e.g. the output folder cannot be made
        error = InternalError(f"{type(exc).__name__}: {exc}")
        result.status = "failed"
        result.error_code, result.error_name, result.message = error.code, error.name, str(exc)
    else:
        result.timings = {k: round(v, 3) for k, v in dubbed.timings.items()}
        result.scenes_from_cache = dubbed.scenes_from_cache
        result.faces_from_cache = dubbed.faces_from_cache
    result.seconds = round(time.perf_counter() - tick, 3)
    return result


def output_complete(path: Path) -> bool:
    """Whether ``path`` is a video that can be probed and has at least one frame."""
    if not path.is_file():
        return False
    try:
        return probe_video(path).frame_count > 0
    except LipsyncError:
        return False


def write_summary(summary: BatchSummary, path: PathLike) -> Path:
    """Write the summary as JSON atomically, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, summary.to_dict(), indent=2)
    return path


def summary_table(summary: BatchSummary) -> str:
    """The summary as a plain-text table, one line per item, then the counts."""
    lines = [f"{'#':>3}  {'status':<7}  {'seconds':>7}  {'code':<7}  output"]
    for item in summary.items:
        line = f"{item.index:>3}  {item.status:<7}  {item.seconds:>7.1f}  "
        line += f"{item.error_code or '-':<7}  {item.output}"
        if item.message:
            line += f"\n{'':>3}  {item.message}"
        lines.append(line)
    counts = ", ".join(f"{summary.count(s)} {s}" for s in STATUSES)
    lines.append(f"{len(summary.items)} item(s): {counts}; {summary.seconds:.1f} s")
    return "\n".join(lines)


def _run_group(group: list[tuple[int, BatchItem]]) -> list[ItemResult]:
    """A worker's task: one video's items, one after another (the faces are cached)."""
    return [run_item(index, item) for index, item in group]


def _csv_rows(text: str, path: Path) -> list[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise InvalidOptionError(
            f"{path.name} line 1: the header lacks {', '.join(missing)}",
            hint="the first line must name the columns: video,audio,output[,option...]",
        )

    rows = []
    for row in reader:
        if None in row:
            raise InvalidOptionError(f"{path.name} line {reader.line_num}: more cells than columns")
        values = {key.strip(): (value or "").strip() for key, value in row.items()}
        if any(values.values()):  # blank lines are allowed
            rows.append((reader.line_num, {k: v for k, v in values.items() if v != ""}))
    return rows


def _jsonl_rows(text: str, path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise InvalidOptionError(f"{path.name} line {line}: not JSON ({exc})") from exc
        if not isinstance(value, dict):
            raise InvalidOptionError(f"{path.name} line {line}: expected a JSON object")
        rows.append((line, value))
    return rows


def _item(row: dict[str, Any], line: int, path: Path, where: str | None = None) -> BatchItem:
    """A checked BatchItem from one row of the list (or one pair of a folder: ``where``)."""
    where = where or f"{path.name} line {line}"
    paths = {}
    for column in REQUIRED_COLUMNS:
        value = row.get(column)
        if isinstance(value, Path):  # a folder's pair, already absolute
            paths[column] = value
            continue
        if not isinstance(value, str) or not value.strip():
            raise InvalidOptionError(f"{where}: '{column}' is missing or empty")
        paths[column] = (path.parent / value.strip()).resolve()

    known = _option_types()
    options: dict[str, Any] = {}
    for name, value in row.items():
        if name in REQUIRED_COLUMNS:
            continue
        if name not in known:
            raise InvalidOptionError(
                f"{where}: unknown option '{name}'", hint=f"options: {', '.join(sorted(known))}"
            )
        options[name] = _convert(value, known[name], f"{where}: {name}")

    try:
        DubOptions(**options).validate()
    except (InvalidOptionError, TypeError) as exc:
        raise InvalidOptionError(f"{where}: {exc}") from exc
    return BatchItem(paths["video"], paths["audio"], paths["output"], options, line)


def _option_types() -> dict[str, tuple[type, ...]]:
    """DubOptions field name -> the types its value may have (None for an optional field)."""
    hints = typing.get_type_hints(DubOptions)
    types = {}
    for f in fields(DubOptions):
        args = typing.get_args(hints[f.name]) or (hints[f.name],)
        types[f.name] = tuple(type(None) if a is type(None) else a for a in args)
    return types


def _convert(value: Any, types: tuple[type, ...], where: str) -> Any:
    """A CSV string or JSON value turned into one of ``types``, or an InvalidOptionError."""
    if not isinstance(value, str):
        # JSON already has types; an int is a fine float, and bool must not pass as int.
        if isinstance(value, bool) and bool not in types:
            raise InvalidOptionError(f"{where}: expected {_names(types)}, got {value!r}")
        if value is None and type(None) in types:
            return None
        if isinstance(value, int) and float in types and int not in types:
            return float(value)
        if isinstance(value, types):
            return value
        raise InvalidOptionError(f"{where}: expected {_names(types)}, got {value!r}")

    text = value.strip()
    if bool in types and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    for kind in (int, float):
        if kind in types:
            try:
                return kind(text)
            except ValueError:
                pass
    if str in types:
        return text
    raise InvalidOptionError(f"{where}: expected {_names(types)}, got {value!r}")


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)
