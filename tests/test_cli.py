"""The command line, run as a user runs it: a separate process, checked by exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lipsync.cli import EXIT_CODES, exit_code
from lipsync.demo import make_demo_inputs
from lipsync.errors import InternalError, InvalidFormatError, NoFaceFoundError


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lipsync", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_inputs(tmp_path_factory.mktemp("cli_demo"), seconds=2.0)


def test_exit_codes_are_distinct_per_error():
    assert exit_code(InvalidFormatError("x")) == 3
    assert exit_code(NoFaceFoundError("x")) == 5
    assert exit_code(InternalError("x")) == 1
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)


def test_dub_writes_the_output_and_reports_json(demo, tmp_path):
    out = tmp_path / "out.mp4"
    done = _run("dub", str(demo.video), str(demo.audio), "-o", str(out), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert Path(report["output"]) == out and out.stat().st_size > 0
    assert report["frames_changed"] > 0
    assert report["engine"] == "e1"


def test_bad_input_prints_one_line_and_exits_with_its_code(demo, tmp_path):
    fake = tmp_path / "voice.mp3"
    fake.write_text("hello, I am a text file\n")
    done = _run("dub", str(demo.video), str(fake), "-o", str(tmp_path / "o.mp4"), cwd=tmp_path)
    assert done.returncode == 3
    lines = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "ERR_008" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_bad_option_is_a_usage_error(demo, tmp_path):
    done = _run("dub", str(demo.video), str(demo.audio), "--intensity", "7", cwd=tmp_path)
    assert done.returncode == 2


def test_inspect_lists_scenes_and_faces(demo, tmp_path):
    done = _run("inspect", str(demo.video), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    scenes = report["scenes"]
    assert len(scenes) == 2  # the face shot, then the cut to a shot without a face
    assert scenes[0]["faces"] == 1 and scenes[1]["faces"] == 0
    assert scenes[1]["start_frame"] == demo.cut_frame

    table = _run("inspect", str(demo.video), cwd=tmp_path)
    assert table.returncode == 0 and "scene" in table.stdout


def test_demo_runs_end_to_end(tmp_path):
    done = _run("demo", "-o", "d", "--seconds", "2", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name in ("demo_video.mp4", "demo_voice.wav", "demo_dubbed.mp4", "demo_contact.png"):
        assert (tmp_path / "d" / name).stat().st_size > 0
