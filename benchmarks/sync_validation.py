"""Does the sync evaluator rank true video/voice pairs above mismatched ones?

True pairs: each shared clip with its own sound. Mismatched pairs: each clip with every
other clip's sound and with the two shared speech files, laid from the first frame as
dub() lays a new voice. Every pair is scored whole and in windows (default 3 s, half
overlapping); the headline is the separation AUC, the probability that a true pair
outscores a mismatched one (target >= 0.9). The true pairs' scores are the level real,
synchronous speech reaches. The mouth is measured once per clip and the phones once per
voice, so the whole run takes about 15 seconds. ``--dub`` also dubs every clip with both
speech files (the built-in e1 generator) and scores the dubs, for comparison with that
level; they take no part in the separation.

    .venv/bin/python benchmarks/sync_validation.py
    .venv/bin/python benchmarks/sync_validation.py --window 2.5 --json /tmp/sync.json
    .venv/bin/python benchmarks/sync_validation.py --dub
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lipsync import dub, evaluate
from lipsync.evaluation import (
    SyncScores,
    measure_mouth,
    measure_voice,
    own_sound_offset,
    score_tracks,
)
from lipsync.media import load_audio, probe_video
from lipsync.phones import SAMPLE_RATE, segment_phones

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "media"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "sync_validation.json"
CLIPS = ("talk1", "talk2", "talk3", "talk4", "talk5")
VOICES = ("speech_a.wav", "speech_b.wav")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=SHARED, help="folder of the shared clips")
    parser.add_argument("--window", type=float, default=3.0, help="window length, seconds")
    parser.add_argument("--json", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--dub", action="store_true", help="also score e1 dubs of every clip")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    clips = [args.media / f"{name}.mp4" for name in CLIPS]
    voices = clips + [args.media / name for name in VOICES]
    missing = [str(p) for p in voices if not p.exists()]
    if missing:
        print(f"missing media: {', '.join(missing)}", file=sys.stderr)
        return 1

    started = time.perf_counter()
    sounds = {path: load_audio(path, rate=SAMPLE_RATE, mono=True)[0][0] for path in voices}
    phones = {path: segment_phones(wav) for path, wav in sounds.items()}

    pairs = []
    for clip in clips:
        info = probe_video(clip)
        mouth = measure_mouth(info)
        for voice_path in voices:
            pairs.append(score_pair(clip, voice_path, mouth, sounds, phones, args.window))
    elapsed = time.perf_counter() - started

    summary = summarize(pairs)
    print_table(pairs, summary, args.window)
    print(f"\n{len(pairs)} pairs scored in {elapsed:.1f} s")
    dubbed = score_dubs(clips, voices[len(clips) :]) if args.dub else []

    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"window_s": args.window, "seconds": round(elapsed, 1), **summary, "pairs": pairs}
    if dubbed:
        result["dubbed"] = dubbed
    args.json.write_text(json.dumps(result, indent=2))
    print(f"written: {args.json}")
    return 0


def score_pair(clip: Path, voice: Path, mouth, sounds, phones, window_s: float) -> dict:
    """Scores of one clip with one voice: whole, and per window."""
    true = voice == clip
    wav = sounds[voice]
    offset = own_sound_offset(clip) if true else 0.0
    audio_times = mouth.frame_times + offset

    # Only the frames the voice reaches are scored, as evaluate() does.
    rows = int(np.sum(audio_times < len(wav) / SAMPLE_RATE))
    track = measure_voice(wav, audio_times, phones[voice])
    whole = score_tracks(mouth.slice(0, rows), track.slice(0, rows))

    fps = 1.0 / float(np.median(np.diff(mouth.frame_times)))
    size = round(window_s * fps)
    windows = []
    for start in range(0, rows - size + 1, max(size // 2, 1)):
        scores = score_tracks(mouth.slice(start, start + size), track.slice(start, start + size))
        windows.append({"start_s": round(float(mouth.frame_times[start]), 2), **_row(scores)})
    return {
        "video": clip.stem,
        "voice": voice.stem,
        "true": true,
        **_row(whole),
        "windows": windows,
    }


def score_dubs(clips: list[Path], voices: list[Path]) -> list[dict]:
    """Dub every clip with every voice (e1, defaults) and score each dub with its voice."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="lipsync-sync-") as work:
        for clip in clips:
            for voice in voices:
                output = Path(work) / f"{clip.stem}_{voice.stem}.mp4"
                dub(clip, voice, output=output)
                report = evaluate(output, voice)
                rows.append({"video": clip.stem, "voice": voice.stem, **_row(report.scores)})

    print(f"\n{'dub of':<6} {'voice':<9} {'score':>6} {'offset':>6} {'viseme':>6} {'env r':>6}")
    for row in rows:
        print(
            f"{row['video']:<6} {row['voice']:<9} {row['score']:>6.2f} {row['offset']:>+6d} "
            f"{row['viseme_auc'] or 0:>6.2f} {row['envelope_corr']:>6.2f}"
        )
    return rows


def _row(scores: SyncScores) -> dict:
    def r(x):
        return None if x is None else round(float(x), 3)

    return {
        "score": r(scores.score),
        "offset": scores.offset,
        "viseme_auc": r(scores.viseme_auc),
        "envelope_corr": r(scores.envelope_corr),
        "envelope_lag": scores.envelope_lag,
        "silent_rest_share": r(scores.silent_rest_share),
        "jitter": r(scores.jitter),
        "frames": scores.frames,
    }


def separation_auc(true: list[float], mismatched: list[float]) -> float:
    """P(a true pair scores above a mismatched one); ties count half."""
    t = np.asarray(true)[:, None]
    m = np.asarray(mismatched)[None, :]
    return float(np.mean((t > m) + 0.5 * (t == m)))


def summarize(pairs: list[dict]) -> dict:
    whole_true = [p["score"] for p in pairs if p["true"]]
    whole_false = [p["score"] for p in pairs if not p["true"]]
    win_true = [w["score"] for p in pairs if p["true"] for w in p["windows"]]
    win_false = [w["score"] for p in pairs if not p["true"] for w in p["windows"]]
    return {
        "separation_auc_whole": round(separation_auc(whole_true, whole_false), 3),
        "separation_auc_windows": round(separation_auc(win_true, win_false), 3),
        "true_pairs": len(whole_true),
        "mismatched_pairs": len(whole_false),
        "true_windows": len(win_true),
        "mismatched_windows": len(win_false),
        "true_score_mean": round(float(np.mean(whole_true)), 3),
        "true_score_min": round(float(np.min(whole_true)), 3),
        "mismatched_score_mean": round(float(np.mean(whole_false)), 3),
        "mismatched_score_max": round(float(np.max(whole_false)), 3),
        "true_offsets": [p["offset"] for p in pairs if p["true"]],
        "true_envelope_lags": [p["envelope_lag"] for p in pairs if p["true"]],
    }


def print_table(pairs: list[dict], summary: dict, window_s: float) -> None:
    def f(x, spec=".2f"):
        return "-" if x is None else format(x, spec)

    print(
        f"{'video':<6} {'voice':<9} {'pair':<5} {'score':>6} {'offset':>6} {'viseme':>6} "
        f"{'env r':>6} {'lag':>4} {'rest':>5} {'jitter':>6}  windows"
    )
    for p in sorted(pairs, key=lambda p: (p["video"], not p["true"], p["voice"])):
        windows = " ".join(f(w["score"]) for w in p["windows"])
        print(
            f"{p['video']:<6} {p['voice']:<9} {'TRUE' if p['true'] else '':<5} "
            f"{f(p['score']):>6} {p['offset']:>+6d} {f(p['viseme_auc']):>6} "
            f"{f(p['envelope_corr']):>6} {p['envelope_lag']:>+4d} "
            f"{f(p['silent_rest_share']):>5} {f(p['jitter']):>6}  {windows}"
        )
    s = summary
    print(
        f"\nseparation AUC, whole pairs: {s['separation_auc_whole']:.3f} "
        f"({s['true_pairs']} true, {s['mismatched_pairs']} mismatched)"
        f"\nseparation AUC, {window_s:g} s windows: {s['separation_auc_windows']:.3f} "
        f"({s['true_windows']} true, {s['mismatched_windows']} mismatched)"
        f"\ntrue pairs score {s['true_score_min']:.2f}..; mean {s['true_score_mean']:.2f}; "
        f"mismatched mean {s['mismatched_score_mean']:.2f}, max {s['mismatched_score_max']:.2f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
