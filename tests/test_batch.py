"""Batch lists, batch runs on the shared clips, and the face cache they rely on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lipsync import cli
from lipsync.batch import BatchItem, output_complete, read_folder, read_list, run_batch
from lipsync.demo import make_demo_inputs
from lipsync.errors import InvalidOptionError
from lipsync.face_cache import CACHE_KIND
from lipsync.faces import detect_faces
from lipsync.media import probe_video
from lipsync.scenes import detect_scenes

# ---------------------------------------------------------------- reading lists


def test_csv_resolves_paths_against_the_list_and_types_options(tmp_path):
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "batch.csv").write_text(
        "video,audio,output,intensity,model,length,faces,max_duration,visemes\n"
        "clips/a.mp4,voices/fr.wav,out/a_fr.mp4,3,e1,audio,1,,no\n"
        "\n"
        f"{tmp_path / 'b.mp4'},fr.wav,b.mp4,,,,all,120,\n"
    )

    first, second = read_list(folder / "batch.csv")

    assert first.video == folder / "clips" / "a.mp4"
    assert first.audio == folder / "voices" / "fr.wav"
    assert first.output == folder / "out" / "a_fr.mp4"
    assert first.options == {
        "intensity": 3,
        "model": "e1",
        "length": "audio",
        "faces": 1,
        "visemes": False,
    }
    assert first.line == 2
    assert second.video == tmp_path / "b.mp4"  # absolute paths stay as they are
    assert second.options == {"faces": "all", "max_duration": 120.0}
    assert second.line == 4


def test_jsonl_lines_become_items(tmp_path):
    rows = [
        {"video": "a.mp4", "audio": "a.wav", "output": "o/a.mp4", "intensity": 1},
        {"video": "b.mp4", "audio": "b.wav", "output": "b.mp4", "max_duration": 60, "faces": 0},
    ]
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")

    first, second = read_list(path)

    assert first.output == tmp_path / "o" / "a.mp4"
    assert first.options == {"intensity": 1}
    assert second.options == {"max_duration": 60.0, "faces": 0}
    assert isinstance(second.options["max_duration"], float)
    assert second.line == 2


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("bad.csv", "video,audio\na.mp4,a.wav\n", "line 1: the header lacks output"),
        ("bad.csv", "video,audio,output\na,b,c\na,b,c,d\n", "line 3: more cells"),
        ("bad.csv", "video,audio,output,speed\na,b,c,2\n", "line 2: unknown option 'speed'"),
        ("bad.csv", "video,audio,output,crf\na,b,c,18\na,b,c,high\n", "line 3: crf"),
        ("bad.csv", "video,audio,output,length\na,b,c,forever\n", "line 2: length must be"),
        ("bad.csv", "video,audio,output\na,,c\n", "line 2: 'audio' is missing"),
        ("bad.jsonl", '{"video": "a", "audio": "b", "output": "c"}\n[1]\n', "line 2: expected"),
        ("bad.jsonl", '{"video": "a", "audio": "b", "output": "c"}\n{nope\n', "line 2: not JSON"),
        ("bad.jsonl", '{"video": "a", "audio": "b", "output": "c", "crf": true}\n', "line 1: crf"),
        ("bad.txt", "video,audio,output\n", "must be .csv or .jsonl"),
        ("empty.csv", "video,audio,output\n", "has no items"),
    ],
)
def test_bad_lists_name_the_line(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InvalidOptionError, match=needle.replace("(", r"\(")):
        read_list(path)


def test_jobs_must_be_positive():
    with pytest.raises(InvalidOptionError, match="jobs"):
        run_batch([BatchItem(Path("a.mp4"), Path("a.wav"), Path("o.mp4"))], jobs=0)


# ---------------------------------------------------------------- the face cache


def _same_faces(a, b) -> None:
    assert len(a.tracks) == len(b.tracks) > 0
    for x, y in zip(a.tracks, b.tracks, strict=True):
        assert (x.scene, x.face) == (y.scene, y.face)
        np.testing.assert_array_equal(x.frames, y.frames)
        np.testing.assert_array_equal(x.landmarks, y.landmarks)
        np.testing.assert_array_equal(x.boxes, y.boxes)
    assert a.mouths.keys() == b.mouths.keys()
    for key in a.mouths:
        for s, t in zip(a.mouths[key], b.mouths[key], strict=True):
            np.testing.assert_array_equal(s.image, t.image)
            np.testing.assert_array_equal(s.lip_rgb, t.lip_rgb)
            assert (s.opening, s.upper_mid_y, s.gap, s.frontality) == (
                t.opening,
                t.upper_mid_y,
                t.gap,
                t.frontality,
            )


def test_faces_are_cached_by_content_and_a_damaged_entry_is_recomputed(
    shared_media, tmp_path, monkeypatch
):
    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "home"))
    copy = tmp_path / "same_bytes.mp4"
    shutil.copyfile(shared_media / "talk3.mp4", copy)

    def faces(path):
        info = probe_video(path)
        return detect_faces(info, detect_scenes(info).scenes, workers=1, use_cache=True)

    first = faces(shared_media / "talk3.mp4")
    assert not first.from_cache
    assert sum(len(samples) for samples in first.mouths.values()) > 0

    second = faces(copy)
    assert second.from_cache
    _same_faces(first, second)

    [entry] = (tmp_path / "home" / "cache" / CACHE_KIND).glob("*.npz")
    entry.write_bytes(b"PK\x03\x04 not really a zip")
    third = faces(copy)
    assert not third.from_cache
    _same_faces(first, third)
    assert faces(copy).from_cache  # the recomputed result was stored again


# ---------------------------------------------------------------- batch runs


def test_output_complete_needs_a_readable_video(shared_media, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 2048)
    assert output_complete(shared_media / "talk5.mp4")
    assert not output_complete(junk)
    assert not output_complete(tmp_path / "absent.mp4")


def test_batch_finishes_the_good_items_reports_the_bad_and_resumes(
    shared_media, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "home"))
    shutil.copyfile(shared_media / "talk3.mp4", tmp_path / "talk3_copy.mp4")
    (tmp_path / "bad.wav").write_text("this is not a sound\n")
    media = shared_media.resolve()
    listing = tmp_path / "episodes.csv"
    listing.write_text(
        "video,audio,output,length\n"
        f"{media / 'talk3.mp4'},{media / 'speech_a.wav'},out/talk3_a.mp4,\n"
        f"{media / 'talk5.mp4'},{media / 'speech_a.wav'},out/talk5_a.mp4,video\n"
        f"{media / 'talk5.mp4'},bad.wav,out/talk5_bad.mp4,\n"
        f"talk3_copy.mp4,{media / 'speech_a.wav'},out/copy_a.mp4,\n"
    )
    items = read_list(listing)
    seen = []

    summary = run_batch(
        items,
        progress=lambda done, total, r: seen.append((done, total, r.index)),
        summary_path=tmp_path / "summary.json",
    )

    statuses = [item.status for item in summary.items]
    assert statuses == ["ok", "ok", "failed", "ok"]
    bad = summary.items[2]
    assert (bad.error_code, bad.error_name) == ("ERR_008", "INVALID_FORMAT")
    assert not (tmp_path / "out" / "talk5_bad.mp4").exists()
    # Same bytes under another name: phases 1 and 2 come from the cache.
    assert not summary.items[0].faces_from_cache
    assert summary.items[3].faces_from_cache and summary.items[3].scenes_from_cache
    assert summary.items[3].timings["faces"] < summary.items[0].timings["faces"]
    for index in (0, 1, 3):
        assert probe_video(Path(summary.items[index].output)).frame_count > 0
    assert [s[0] for s in seen] == [1, 2, 3, 4] and {s[1] for s in seen} == {4}
    written = json.loads((tmp_path / "summary.json").read_text())
    assert (written["ok"], written["failed"], written["skipped"]) == (3, 1, 0)

    # A rerun (through the CLI, two worker processes) skips what is done, fails the bad again.
    capsys.readouterr()
    code = cli.main(["batch", str(listing), "--jobs", "2", "--json"])
    rerun = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [item["status"] for item in rerun["items"]] == [
        "skipped",
        "skipped",
        "failed",
        "skipped",
    ]
    assert rerun["items"][2]["error_code"] == "ERR_008"
    on_disk = json.loads((tmp_path / "episodes.summary.json").read_text())
    assert on_disk["skipped"] == 3


# ---------------------------------------------------------------- folders


def _touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"")


def test_a_folder_pairs_voices_with_the_longest_video_name(tmp_path):
    _touch(tmp_path, "ep1.mp4", "ep1_extra.mov", "ep1.fr.wav", "ep1-de.mp3", "ep1_extra.es.wav")
    _touch(tmp_path, "ep1.wav", "other.fr.wav", "notes.txt", "ep2.mp4")

    items = read_folder(tmp_path, options={"intensity": 3})

    pairs = {(item.video.name, item.audio.name) for item in items}
    assert pairs == {
        ("ep1.mp4", "ep1-de.mp3"),
        ("ep1.mp4", "ep1.fr.wav"),
        ("ep1_extra.mov", "ep1_extra.es.wav"),
    }
    outputs = {item.output for item in items}
    assert outputs == {
        tmp_path / "dubbed" / f"{n}.mp4" for n in ("ep1-de", "ep1.fr", "ep1_extra.es")
    }
    assert all(item.options == {"intensity": 3} for item in items)


def test_a_folder_without_pairs_or_with_bad_options_is_refused(tmp_path):
    _touch(tmp_path, "talk.mp4", "voice.wav")
    with pytest.raises(InvalidOptionError, match="no video and voice pairs"):
        read_folder(tmp_path)

    _touch(tmp_path, "talk.en.wav")
    with pytest.raises(InvalidOptionError, match="talk.en.wav: .*intensity"):
        read_folder(tmp_path, options={"intensity": 7})
    with pytest.raises(InvalidOptionError, match="not a folder"):
        read_folder(tmp_path / "talk.mp4")


def test_command_options_apply_to_every_row_unless_the_row_sets_its_own(tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text(
        "video,audio,output,intensity\na.mp4,a.wav,a_out.mp4,1\nb.mp4,b.wav,b.mp4,\n"
    )

    first, second = read_list(listing, options={"intensity": 3, "model": "e1"})

    assert first.options == {"intensity": 1, "model": "e1"}
    assert second.options == {"intensity": 3, "model": "e1"}


def test_batch_command_dubs_a_folder_and_a_rerun_skips_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "home"))
    # The demo's inputs have a face and need no shared media: one video, two voices.
    folder = tmp_path / "season"
    demo = make_demo_inputs(folder, seconds=1.0, size=192)
    demo.video.rename(folder / "ep1.mp4")
    shutil.copyfile(demo.audio, folder / "ep1.fr.wav")
    demo.audio.rename(folder / "ep1_de.wav")

    code = cli.main(["batch", str(folder), "--json", "--intensity", "1"])

    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["ok"] == 2
    for name in ("ep1.fr", "ep1_de"):
        assert probe_video(folder / "dubbed" / f"{name}.mp4").frame_count == 25
    assert json.loads((folder / "dubbed" / "summary.json").read_text())["ok"] == 2

    assert cli.main(["batch", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 2

    # --output-dir is a folder-mode option: with a list it is a usage error.
    listing = tmp_path / "list.csv"
    listing.write_text(f"video,audio,output\n{folder / 'ep1.mp4'},{folder / 'ep1.fr.wav'},x.mp4\n")
    assert cli.main(["batch", str(listing), "--output-dir", str(tmp_path)]) == 2


def test_the_item_under_way_reports_its_phases(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "home"))
    demo = make_demo_inputs(tmp_path / "in", seconds=1.0, size=192)
    items = [BatchItem(demo.video, demo.audio, tmp_path / f"out{i}.mp4", {}) for i in range(2)]
    seen: list[tuple[int, str, int, int]] = []

    run_batch(items, item_progress=lambda *call: seen.append(call))

    for index in (0, 1):
        calls = [c for c in seen if c[0] == index]
        phases = list(dict.fromkeys(phase for _, phase, _, _ in calls))
        assert phases == ["scenes", "faces", "export"], "each item, phase by phase, in order"
        last = [c for c in calls if c[1] == "export"][-1]
        assert last[2] == last[3] == 25, "its export reaches every frame"
    first = [i for i, call in enumerate(seen) if call[0] == 0]
    second = [i for i, call in enumerate(seen) if call[0] == 1]
    assert max(first) < min(second), "one item after the other"

    # The command draws the item's phases under the batch's bar (on stderr).
    listing = tmp_path / "list.csv"
    listing.write_text(f"video,audio,output\n{demo.video},{demo.audio},{tmp_path / 'cli.mp4'}\n")
    assert cli.main(["batch", str(listing)]) == 0
    err = capfd.readouterr().err
    assert "cli.mp4:   export" in err and "batch" in err
