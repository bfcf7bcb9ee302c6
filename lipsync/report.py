"""Pictures for people: a contact sheet of the original and the dubbed mouth over time, and
the sync evaluator's report (tracks, phones, agreement against lag, mouth crops)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import InternalError
from .evaluation import SYNC_TOLERANCE_S, MouthTrack, SyncReport
from .landmarks import mouth_frame
from .media import PathLike, iter_frames, probe_video

TILE = 160


def contact_sheet(
    original: PathLike, dubbed: PathLike, out_png: PathLike, *, count: int = 8
) -> Path:
    """Write a PNG: ``count`` mouth crops of the original (top row) above the dubbed ones.

    Frames are spread evenly over the ones where a face is found; both rows use the crop
    box found on the original, so the rows differ only where the dub changed something.
    """
    import mediapipe as mp

    src, dub = probe_video(original), probe_video(dubbed)
    picks = np.linspace(0, min(src.frame_count, dub.frame_count) - 1, count * 2).astype(int)
    src_frames = _frames_at(src, picks)
    dub_frames = _frames_at(dub, picks)

    tops, bottoms, labels = [], [], []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True) as mesh:
        for index in picks:
            found = mesh.process(src_frames[index]).multi_face_landmarks
            if not found or len(tops) == count:
                continue
            h, w = src_frames[index].shape[:2]
            points = np.array([(p.x * w, p.y * h) for p in found[0].landmark[:468]])
            box = _mouth_box(points, w, h)
            tops.append(_crop(src_frames[index], box))
            bottoms.append(_crop(dub_frames[index], box))
            labels.append(f"{src.frame_times[index]:.2f}s")

    if not tops:
        blank = np.full((TILE, TILE, 3), 40, np.uint8)
        tops, bottoms, labels = [blank], [blank], ["no face"]
    for tile, label in zip(tops, labels, strict=True):
        cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)

    sheet = np.vstack([np.hstack(tops), np.hstack(bottoms)])
    out = Path(out_png)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return out


def _frames_at(info, picks: np.ndarray) -> dict[int, np.ndarray]:
    wanted = set(int(i) for i in picks)
    frames: dict[int, np.ndarray] = {}
    for batch in iter_frames(info):
        for index, image in zip(batch.indices, batch.images, strict=True):
            if int(index) in wanted:
                frames[int(index)] = image
    return frames


def _mouth_box(points: np.ndarray, w: int, h: int) -> tuple[int, int, int, int]:
    frame = mouth_frame(points)
    half = int(frame.width * 0.9)
    cx, cy = frame.center
    x0, y0 = max(int(cx - half), 0), max(int(cy - half * 0.8), 0)
    return x0, y0, min(int(cx + half), w), min(int(cy + half * 1.0), h)


def _crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return cv2.resize(image[y0:y1, x0:x1], (TILE, TILE), interpolation=cv2.INTER_AREA)


# --- The evaluator's picture --------------------------------------------------------------

_SHAPE_COLORS = {
    "closed": "#d62728",
    "lip_teeth": "#ff7f0e",
    "rounded": "#9467bd",
    "open": "#2ca02c",
    "other": "#c7c7c7",
}
_TILE = 128  # px, side of one mouth crop in the strip


def plot_report(report: SyncReport, out_png: PathLike, *, tiles: int = 10) -> Path:
    """Write a PNG for a person: the tracks over time with the phones, and mouth crops.

    Top: the mouth opening and the speech envelope over time, silent frames shaded, the
    phones underneath coloured by the mouth shape they call for. Right: the sync curve and
    the envelope correlation against lag. Bottom: ``tiles`` mouth crops spread over the
    span, numbered where they sit on the time axis. Phone labels stay legible on spans up to
    about 10 s; evaluate a window of a longer video to look at it closely.

    Raises:
        InternalError: the file cannot be written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 8.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(3, 2, height_ratios=[3.2, 1.0, 2.2], width_ratios=[4.2, 1])
    tracks_ax = figure.add_subplot(grid[0, 0])
    phones_ax = figure.add_subplot(grid[1, 0], sharex=tracks_ax)
    lags_ax = figure.add_subplot(grid[0:2, 1])
    strip_ax = figure.add_subplot(grid[2, :])

    picks = _strip_rows(report.mouth, tiles)
    _plot_tracks(tracks_ax, report, picks)
    _plot_phones(phones_ax, report)
    _plot_lags(lags_ax, report)
    _plot_strip(strip_ax, report, picks)

    s = report.scores
    auc = "-" if s.viseme_auc is None else f"{s.viseme_auc:.2f}"
    voice = "its own sound" if report.audio == report.video else report.audio.name
    figure.suptitle(
        f"{report.video.name} + {voice}:  sync score {s.score:.2f}, "
        f"offset {s.offset:+d} frames  |  viseme AUC {auc} "
        f"({s.open_frames} open / {s.closed_frames} closed frames)  |  envelope r "
        f"{s.envelope_corr:.2f} at lag {s.envelope_lag:+d}",
        fontsize=12,
    )
    out = Path(out_png)
    try:
        figure.savefig(out)
    except OSError as exc:
        raise InternalError(f"cannot write the plot {out}: {exc}") from exc
    return out


def _strip_rows(mouth: MouthTrack, tiles: int) -> np.ndarray:
    """Rows of the mouth track to show: evenly spread over the frames with a face."""
    rows = np.flatnonzero(mouth.has_face)
    if len(rows) == 0:
        return rows
    return np.unique(rows[np.linspace(0, len(rows) - 1, min(tiles, len(rows))).round().astype(int)])


def _plot_tracks(ax, report: SyncReport, picks: np.ndarray) -> None:
    times, mouth, voice = report.mouth.frame_times, report.mouth, report.voice
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.04
    for start, stop in _runs(~voice.active):
        ax.axvspan(times[start], times[stop - 1] + step, color="0.9", lw=0)

    ax.plot(times + step / 2, mouth.opening, color="#1f77b4", lw=1.8, label="mouth opening")
    ax.set_ylabel("inner-lip opening (x eye distance)", color="#1f77b4")
    ax.set_ylim(0, max(0.05, float(np.nanmax(mouth.opening)) * 1.15))
    envelope_ax = ax.twinx()
    envelope_ax.plot(times + step / 2, voice.envelope, color="#e377c2", lw=1.4, label="envelope")
    envelope_ax.set_ylabel("speech envelope (0-1)", color="#e377c2")
    envelope_ax.set_ylim(0, 1.15)

    for number, row in enumerate(picks, start=1):
        x = times[row] + step / 2
        ax.axvline(x, color="0.4", ls=":", lw=0.8)
        ax.annotate(str(number), (x, 1.0), xycoords=("data", "axes fraction"), ha="center",
                    va="bottom", fontsize=8, color="0.3")  # fmt: skip
    lines = ax.get_lines()[:1] + envelope_ax.get_lines()
    ax.legend(lines + [_patch("0.9")], ["mouth opening", "speech envelope", "silence"],
              loc="upper left", fontsize=8, ncol=3)  # fmt: skip
    ax.tick_params(labelbottom=False)
    ax.set_xlim(times[0], times[-1] + step)


def _plot_phones(ax, report: SyncReport) -> None:
    start = report.start + report.voice.offset
    end = report.end + report.voice.offset
    for phone in report.voice.phones:
        if phone.end <= start or phone.start >= end or phone.shape == "rest":
            continue
        # Phones are in audio time; the axis is video time.
        left = phone.start - report.voice.offset
        width = phone.end - phone.start
        ax.broken_barh([(left, width)], (0, 1), color=_SHAPE_COLORS[phone.shape], alpha=0.85)
        if width >= 0.045:
            ax.text(left + width / 2, 0.5, phone.label, ha="center", va="center", fontsize=7,
                    rotation=90 if width < 0.08 else 0, clip_on=True)  # fmt: skip
    ax.set_yticks([])
    ax.set_ylim(0, 1)
    ax.set_xlabel("video time (s)")
    ax.set_ylabel("phones", rotation=0, ha="right", va="center")
    handles = [_patch(color) for color in _SHAPE_COLORS.values()]
    ax.legend(handles, list(_SHAPE_COLORS), loc="upper center", bbox_to_anchor=(0.5, -0.55),
              ncol=len(handles), fontsize=8, frameon=False)  # fmt: skip


def _plot_lags(ax, report: SyncReport) -> None:
    s = report.scores
    fps = report.fps or 25.0
    tolerance = max(1, round(SYNC_TOLERANCE_S * fps))
    ax.axvspan(-tolerance - 0.5, tolerance + 0.5, color="0.92", lw=0, label="sync tolerance")
    ax.plot(s.sync_curve.lags, s.sync_curve.values, "o-", color="k", ms=3, label="sync score")
    ax.plot(s.envelope_curve.lags, s.envelope_curve.values, "s--", color="#e377c2", ms=3,
            label="envelope r")  # fmt: skip
    ax.axhline(0, color="0.5", lw=0.8)
    ax.axvline(s.offset, color="k", lw=0.8, ls=":")
    ax.set_xlabel("lag (frames; > 0: mouth after sound)")
    ax.set_title("agreement against lag", fontsize=10)
    ax.legend(fontsize=8, loc="lower center")


def _plot_strip(ax, report: SyncReport, picks: np.ndarray) -> None:
    ax.axis("off")
    if len(picks) == 0:
        ax.text(0.5, 0.5, "no face found", ha="center", va="center", transform=ax.transAxes)
        return
    crops = _mouth_crops(report, picks)
    ax.imshow(np.hstack(crops))
    times = report.mouth.frame_times
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.04
    for number, row in enumerate(picks, start=1):
        moment = times[row] + step / 2 + report.voice.offset  # audio time of the frame's middle
        under = [p.label for p in report.voice.phones if p.start <= moment < p.end]
        phone = f"{under[0] if under else '-'} ({report.voice.shapes[row]})"
        label = f"{number}: {times[row]:.2f} s, {phone}\ngap {report.mouth.opening[row]:.3f}"
        ax.text((number - 0.5) * _TILE, _TILE + 4, label, ha="center", va="top", fontsize=8)
    ax.set_title("mouth crops (numbers match the marks on the time axis)", fontsize=10)


def _mouth_crops(report: SyncReport, picks: np.ndarray) -> list[np.ndarray]:
    """(_TILE, _TILE, 3) upright RGB crops around the mouth at the picked rows."""
    import cv2

    info = probe_video(report.video)
    wanted = {int(report.mouth.frame_indices[row]): row for row in picks}
    crops: dict[int, np.ndarray] = {}
    first, last = min(wanted), max(wanted)
    for batch in iter_frames(info, first, last + 1):
        for index, image in zip(batch.indices.tolist(), batch.images, strict=True):
            if index in wanted:
                x0, y0, x1, y1 = report.mouth.boxes[wanted[index]].round().astype(int)
                height, width = image.shape[:2]
                crop = image[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
                crop = np.rot90(crop, k=(info.rotation // 90) % 4)
                crops[index] = cv2.resize(
                    np.ascontiguousarray(crop), (_TILE, _TILE), interpolation=cv2.INTER_AREA
                )
    blank = np.full((_TILE, _TILE, 3), 40, np.uint8)
    return [crops.get(index, blank) for index in sorted(wanted)]


def _patch(color):
    from matplotlib.patches import Patch

    return Patch(color=color)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) ranges where a boolean array is True."""
    edges = np.diff(np.concatenate([[0], np.asarray(mask, np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))
