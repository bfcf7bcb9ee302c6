"""Phase 1: cut detection on synthetic and real clips, and the per-content cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from skimage import data

from lipsync import cache, scenes
from lipsync.errors import InvalidOptionError
from lipsync.media import probe_video
from lipsync.scenes import detect_scenes, scenes_from_cuts

CUT_AT = 30


def write_clip(path: Path, images: list[np.ndarray], fps: int = 25) -> Path:
    """Encode RGB frames as H.264 in an .mp4."""
    height, width = images[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def drifting(image: np.ndarray, count: int, size: int = 160) -> list[np.ndarray]:
    """``count`` crops of ``image`` sliding one pixel a frame: motion, but no cut."""
    return [image[10 + i // 2 : 10 + i // 2 + size, 10 + i : 10 + i + size] for i in range(count)]


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory) -> Path:
    """60 frames: the astronaut for 30, then coffee for 30."""
    folder = tmp_path_factory.mktemp("scenes")
    images = drifting(data.astronaut(), CUT_AT) + drifting(data.coffee(), 60 - CUT_AT)
    return write_clip(folder / "cut.mp4", images)


@pytest.fixture(scope="module")
def still_clip(tmp_path_factory) -> Path:
    """50 frames of one slowly drifting shot."""
    folder = tmp_path_factory.mktemp("scenes")
    return write_clip(folder / "still.mp4", drifting(data.astronaut(), 50))


def assert_covers(scene_list: list[scenes.Scene], frame_count: int) -> None:
    assert scene_list[0].start == 0
    assert scene_list[-1].end == frame_count
    for i, (a, b) in enumerate(zip(scene_list[:-1], scene_list[1:], strict=True)):
        assert a.index == i and b.index == i + 1
        assert a.end == b.start and a.end > a.start


def test_hard_cut_found_at_its_frame(cut_clip):
    info = probe_video(cut_clip)
    result = detect_scenes(info, use_cache=False)

    assert len(result.scenes) == 2
    assert abs(result.scenes[1].start - CUT_AT) <= 1
    assert_covers(result.scenes, info.frame_count)
    assert result.scenes[1].start_time == pytest.approx(info.frame_times[result.scenes[1].start])
    assert result.scenes[-1].end_time == pytest.approx(info.duration)
    assert result.from_cache is False


def test_clip_without_cut_is_one_scene(still_clip):
    result = detect_scenes(still_clip, use_cache=False)

    assert len(result.scenes) == 1
    assert (result.scenes[0].start, result.scenes[0].end) == (0, 50)


def test_higher_threshold_ignores_the_cut(cut_clip):
    # The astronaut-to-coffee score is far below 255, the largest a frame can score.
    result = detect_scenes(cut_clip, threshold=255.0, use_cache=False)
    assert len(result.scenes) == 1


def test_second_run_and_a_copy_are_cache_hits(cut_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "home"))
    first = detect_scenes(cut_clip)
    assert first.from_cache is False
    assert first.digest == cache.file_digest(cut_clip)

    # From here on nothing may be probed or decoded.
    def refuse(*args, **kwargs):
        raise AssertionError("a cache hit must not decode the video")

    monkeypatch.setattr(scenes, "iter_video_frames", refuse)
    monkeypatch.setattr(scenes, "probe_video", refuse)
    copy = shutil.copy(cut_clip, tmp_path / "renamed.mp4")

    for source in (cut_clip, copy, probe_video(copy)):
        again = detect_scenes(source)
        assert again.from_cache is True
        assert again.scenes == first.scenes
        assert again.digest == first.digest


def test_other_parameters_miss_the_cache(cut_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "home"))
    detect_scenes(cut_clip)

    assert detect_scenes(cut_clip, threshold=30.0).from_cache is False
    assert detect_scenes(cut_clip, min_scene_len=10).from_cache is False
    assert detect_scenes(cut_clip, use_cache=False).from_cache is False


def test_damaged_cache_entry_is_recomputed(cut_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "home"))
    first = detect_scenes(cut_clip)
    [entry] = (tmp_path / "home" / "cache" / scenes.CACHE_KIND).glob("*.json")

    # A gap between scenes, then plain garbage: both must be ignored, never trusted.
    value = json.loads(entry.read_text())
    value["scenes"][1][0] += 3
    for text in (json.dumps(value), "{not json"):
        entry.write_text(text)
        again = detect_scenes(cut_clip)
        assert again.from_cache is False
        assert again.scenes == first.scenes


def test_progress_counts_frames(cut_clip):
    calls: list[tuple[int, int]] = []
    detect_scenes(
        cut_clip, use_cache=False, progress=lambda done, total: calls.append((done, total))
    )

    assert calls[-1] == (60, 60)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_scenes_from_cuts_ignores_out_of_range_cuts(still_clip):
    info = probe_video(still_clip)
    result = scenes_from_cuts(info, [0, 20, 20, 10, 50, 99])

    assert [(s.start, s.end) for s in result] == [(0, 10), (10, 20), (20, 50)]


@pytest.mark.parametrize(
    "options",
    [{"threshold": 0}, {"threshold": float("nan")}, {"min_scene_len": 0}, {"analysis_width": 8}],
)
def test_bad_options_are_refused(still_clip, options):
    with pytest.raises(InvalidOptionError):
        detect_scenes(still_clip, use_cache=False, **options)


def test_real_clips_are_single_scenes(shared_media):
    # talk4's head moves a lot; none of the clips has a cut.
    for name in ("talk1", "talk4"):
        result = detect_scenes(shared_media / f"{name}.mp4", use_cache=False)
        assert len(result.scenes) == 1, name


def first_frames(path: Path, count: int, size: int = 320) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24", width=size, height=size))
            if len(frames) == count:
                return frames
    raise AssertionError(f"{path.name} has fewer than {count} frames")


def test_cut_between_two_real_clips(shared_media, tmp_path):
    frames = first_frames(shared_media / "talk1.mp4", 40) + first_frames(
        shared_media / "talk3.mp4", 40
    )
    clip = write_clip(tmp_path / "joined.mp4", frames)

    result = detect_scenes(clip, use_cache=False)
    assert [s.start for s in result.scenes] == [0, 40]
