"""How many frames per second do the two face-landmark paths analyse, by batch size?

The workload is the shared clips (or the clips given), each cut into the ONNX path's runs
(``landmarkers.onnx.split_chunk``: about 64 frames, a warm-up inside each clip), the whole
list taken ``--copies`` times so that even the largest batch has lanes to fill, as a batch
of videos would. Both paths analyse the same runs, decoding included, in this process:

* ``mediapipe``: MediaPipe's own API (``faces._analyse_chunk``), each clip in one piece
  (its natural chunk; a run of 64 frames would cost it a new graph each time);
* ``onnx``: the converted models on onnxruntime, ``batch`` runs advanced in lockstep, for
  each execution provider and batch size.

A second table times the face-mesh model alone (192 px crops per second by batch size), the
ceiling the lockstep path approaches when decoding is not the bottleneck. Each cell is the
best of ``--repeats`` runs. The mean landmark distance between the two paths is printed as a
check. Everything is printed and written as JSON.

    .venv/bin/python benchmarks/landmarks.py
    .venv/bin/python benchmarks/landmarks.py --providers CUDAExecutionProvider --batches 1 8 32 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from onnx_timing import open_session, timed_runs

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "media"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "landmarks.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", nargs="*", type=Path, help="videos (default: shared clips)")
    parser.add_argument("--providers", nargs="*", help="onnxruntime providers (default: all)")
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 8, 32])
    parser.add_argument("--copies", type=int, default=3, help="times the run list is taken")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    parser.add_argument("--no-mediapipe", action="store_true", help="skip the CPU path")
    parser.add_argument("--json", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    import onnxruntime as ort

    from lipsync.faces import Chunk
    from lipsync.landmarkers.onnx import split_chunk
    from lipsync.media import probe_video

    clips = args.clips or sorted(SHARED.glob("talk*.mp4"))
    if not clips:
        print(f"no clips given and none in {SHARED}", file=sys.stderr)
        return 1
    runs = []
    for clip in clips:
        info = probe_video(clip)
        runs += split_chunk(info, Chunk(0, 0, info.frame_count))
    runs = runs * args.copies
    frames = sum(run.stop - run.start for run in runs)
    providers = args.providers or [
        p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
        if p in ort.get_available_providers()
    ]  # fmt: skip
    print(f"{len(clips)} clip(s), {len(runs)} runs, {frames} frames; cpus {os.cpu_count()}")

    report: dict = {"clips": [str(c) for c in clips], "runs": len(runs), "frames": frames}
    report["cpus"] = os.cpu_count()
    reference = None
    if not args.no_mediapipe:
        seconds, reference = best(args.repeats, lambda: mediapipe_path(runs, args.copies))
        report["mediapipe"] = {"seconds": round(seconds, 3), "fps": round(frames / seconds, 1)}
        print(f"{'mediapipe (CPU, 1 process)':<40} {frames / seconds:>8.1f} frames/s")

    report["onnx"] = []
    for provider in providers:
        for batch in args.batches:
            seconds, found = best(
                args.repeats, lambda b=batch, p=provider: onnx_path(runs, b, p, args.threads)
            )
            row = {"provider": provider, "batch": batch, "seconds": round(seconds, 3)}
            row["fps"] = round(frames / seconds, 1)
            if reference is not None:
                row["mean_px_vs_mediapipe"] = round(distance(runs, found, reference), 4)
            report["onnx"].append(row)
            print(f"{'onnx ' + provider + ' batch ' + str(batch):<40} {row['fps']:>8.1f} frames/s")

    report["mesh_model"] = []
    for provider in providers:
        for batch in sorted({*args.batches, 64}):
            rate = mesh_rate(provider, batch, args.threads)
            report["mesh_model"].append({"provider": provider, "batch": batch, "crops_per_s": rate})
            print(f"{'mesh model ' + provider + ' batch ' + str(batch):<40} {rate:>8.1f} crops/s")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"written: {args.json}")
    return 0


def best(repeats: int, work):
    """(least seconds, result) over ``repeats`` calls of ``work``."""
    timings = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        result = work()
        timings.append(time.perf_counter() - started)
    return min(timings), result


def mediapipe_path(runs, copies: int) -> dict:
    """Each clip analysed whole, ``copies`` times; the raw faces of the last pass, by clip."""
    from lipsync.faces import _analyse_chunk

    videos = {run.info.path: run.info for run in runs}
    found = {}
    for _ in range(copies):
        for path, info in videos.items():
            found[path] = _analyse_chunk(info, 0, info.frame_count, 640, None, tracked=1)
    return found


_LANDMARKERS: dict = {}


def onnx_path(runs, batch: int, provider: str, threads: int | None) -> list:
    from lipsync.landmarkers import get_landmarker

    key = (batch, provider)
    if key not in _LANDMARKERS:  # sessions are opened (and warmed) outside the timing
        landmarker = get_landmarker("onnx", batch_size=batch, providers=[provider])
        landmarker.threads = threads
        landmarker.analyse_runs(runs[:1], tracked=1)
        _LANDMARKERS[key] = landmarker
    return _LANDMARKERS[key].analyse_runs(runs, tracked=1)


def distance(runs, found: list, reference: dict) -> float:
    """Mean landmark distance (px) over frames both paths found a face on."""
    errors = []
    for run, ours in zip(runs, found, strict=True):
        theirs = reference[run.info.path]
        common, a, b = np.intersect1d(ours.frames, theirs.frames, return_indices=True)
        if len(common):
            errors.append(np.linalg.norm(ours.landmarks[a] - theirs.landmarks[b], axis=-1).mean())
    return float(np.mean(errors)) if errors else float("nan")


def mesh_rate(provider: str, batch: int, threads: int | None, seconds: float = 2.0) -> float:
    """Face-mesh model inferences per second at one batch size."""
    from lipsync.landmarkers.face_models import face_model_paths

    session = open_session(face_model_paths()["face_landmark"], [provider], threads)
    feed = {session.get_inputs()[0].name: np.random.rand(batch, 192, 192, 3).astype(np.float32)}
    runs, elapsed = timed_runs(session, feed, seconds, warmup=3)
    return round(runs * batch / elapsed, 1)


if __name__ == "__main__":
    sys.exit(main())
