"""Does e1 move the mouth like real speech? Measured by the sync evaluator.

Every shared clip is dubbed with speech_a.wav, speech_b.wav and the next clip's own sound.
Each dub is scored against the voice it was dubbed with and against the other two (it
must score highest with its own: discrimination). The true pairs (each clip with its own
sound) set the natural level. Checked per dub:

- viseme agreement and envelope correlation at or above the true pairs' median;
- best lag (offset) within +-1 frame;
- at least 90 % of silent frames with the mouth at rest;
- mouth jitter no worse than the source's, both measured on the same frames (those where
  the new voice is steady: the source scored against the new voice), since a mouth that
  rests while the source speaker talks would otherwise be compared with a quieter set of
  frames; the source's jitter with its own sound is reported beside it;
- outside the lower-face mask, PSNR >= 40 dB against a pass-through transcode.

Prints a table, writes JSON and one contact sheet PNG per dub (original mouth above,
dubbed below) into benchmarks/results/.

    .venv/bin/python benchmarks/sync_quality.py
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from lipsync import dub, evaluate
from lipsync.export import transcode_passthrough
from lipsync.faces import detect_faces
from lipsync.generators.e1 import lower_face_alpha
from lipsync.media import iter_frames, load_audio, probe_video
from lipsync.report import contact_sheet
from lipsync.scenes import detect_scenes

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "media"
RESULTS = ROOT / "benchmarks" / "results"
CLIPS = ("talk1", "talk2", "talk3", "talk4", "talk5")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=SHARED)
    parser.add_argument("--intensity", type=int, default=2)
    parser.add_argument("--json", type=Path, default=RESULTS / "sync_quality.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="lipsync-quality-"))
    sheets = RESULTS / "sheets"
    sheets.mkdir(parents=True, exist_ok=True)
    clips = [args.media / f"{name}.mp4" for name in CLIPS]

    truth = {clip.stem: evaluate(clip).to_dict() for clip in clips}
    median = {
        key: float(np.median([t[key] for t in truth.values() if t[key] is not None]))
        for key in ("viseme_auc", "envelope_corr", "score")
    }

    rows = []
    for i, clip in enumerate(clips):
        voices = [args.media / "speech_a.wav", args.media / "speech_b.wav", clips[(i + 1) % 5]]
        for voice in voices:
            rows.append(measure(clip, voice, voices, truth[clip.stem], median, work, sheets, args))

    print_table(truth, median, rows)
    summary = {
        "true_pairs": truth,
        "true_median": median,
        "dubs": rows,
        "all_pass": all(r["pass"] for r in rows),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print(f"\nwritten: {args.json} and {len(rows)} contact sheets in {sheets}")
    return 0


def measure(clip, voice, voices, truth, median, work, sheets, args) -> dict:
    """Dub one clip with one voice and check every criterion."""
    name = f"{clip.stem}+{voice.stem}"
    out = work / f"{name}.mp4"
    dub(clip, voice, intensity=args.intensity, output=out)

    own = evaluate(out, voice).to_dict()
    others = {v.stem: evaluate(out, v).score for v in voices if v != voice}
    source_jitter = evaluate(clip, voice).scores.jitter
    psnr = outside_mask_psnr(clip, out, voice, work)
    sheet = contact_sheet(clip, out, sheets / f"{name}.png")

    checks = {
        "viseme": own["viseme_auc"] is not None and own["viseme_auc"] >= median["viseme_auc"],
        "envelope": own["envelope_corr"] >= median["envelope_corr"],
        "lag": abs(own["offset"]) <= 1,
        "discrimination": all(own["score"] > s for s in others.values()),
        "rest": own["silent_rest_share"] is None or own["silent_rest_share"] >= 0.9,
        "jitter": own["jitter"] is None or source_jitter is None or own["jitter"] <= source_jitter,
        "psnr": psnr >= 40.0,
    }
    return {
        "dub": name,
        "own": own,
        "against_others": others,
        "source_jitter_same_frames": source_jitter,
        "source_jitter_own_sound": truth["jitter"],
        "psnr_outside_mask": round(psnr, 2),
        "checks": checks,
        "pass": all(checks.values()),
        "contact_sheet": str(sheet),
    }


def outside_mask_psnr(clip: Path, dubbed: Path, voice: Path, work: Path) -> float:
    """PSNR of the pixels e1 may not touch, dub against a pass-through of the same source."""
    reference = work / f"{clip.stem}_passthrough.mp4"
    transcode_passthrough(clip, reference, audio=load_audio(voice))
    info = probe_video(clip)
    faces = detect_faces(info, detect_scenes(info).scenes)

    squared, count = 0.0, 0
    pairs = zip(iter_frames(probe_video(reference)), iter_frames(probe_video(dubbed)), strict=False)
    for ref_batch, out_batch in pairs:
        for index, ref, out in zip(
            ref_batch.indices, ref_batch.images, out_batch.images, strict=True
        ):
            keep = np.ones(ref.shape[:2], bool)
            for _, landmarks in faces.tracks_at(int(index)):
                (x0, y0, x1, y1), alpha = lower_face_alpha(landmarks, ref.shape)
                keep[y0:y1, x0:x1] &= alpha == 0
            diff = ref[keep].astype(np.float64) - out[keep]
            squared += float((diff**2).sum())
            count += diff.size
    mse = squared / max(count, 1)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def print_table(truth, median, rows) -> None:
    print("true pairs (the natural level):")
    print(
        f"{'clip':<8} {'score':>6} {'viseme':>7} {'env r':>6} {'offset':>6} {'rest':>5} "
        f"{'jitter':>6}"
    )
    for name, t in truth.items():
        print(
            f"{name:<8} {t['score']:>6} {t['viseme_auc']!s:>7} {t['envelope_corr']:>6} "
            f"{t['offset']:>6} {t['silent_rest_share']!s:>5} {t['jitter']!s:>6}"
        )
    print(
        f"median   {median['score']:>6.3f} {median['viseme_auc']:>7.3f} "
        f"{median['envelope_corr']:>6.3f}"
    )

    print("\ndubs (e1):")
    head = (
        f"{'dub':<22} {'score':>6} {'others':>6} {'viseme':>7} {'env r':>6} {'off':>4} "
        f"{'rest':>5} {'jitter':>6} {'src':>6} {'psnr':>6}  verdict"
    )
    print(head)
    for r in rows:
        o = r["own"]
        failed = [k for k, ok in r["checks"].items() if not ok]
        print(
            f"{r['dub']:<22} {o['score']:>6} {max(r['against_others'].values()):>6.3f} "
            f"{o['viseme_auc']!s:>7} {o['envelope_corr']:>6} {o['offset']:>4} "
            f"{o['silent_rest_share']!s:>5} {o['jitter']!s:>6} "
            f"{_fmt(r['source_jitter_same_frames']):>6} {r['psnr_outside_mask']:>6}  "
            + ("pass" if not failed else "FAIL: " + ", ".join(failed))
        )


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
