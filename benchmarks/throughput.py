"""How fast is dubbing, next to simply re-encoding the same video? And how much memory?

For each clip: a pass-through transcode (decode, convert to RGB, encode with the same
settings) and a full dub, measured in the same run, one after the other. Prints a table and
writes JSON. The headline is ``ratio`` = dub seconds / pass-through seconds (target for
``e1`` on CPU: <= 2.0 at 1080p). Each run happens in a child process whose whole process
tree is sampled for resident memory; ``--long-minutes`` adds a synthetic long 1080p input
(target: under 2 GB resident).

    .venv/bin/python benchmarks/throughput.py                 # shared clips + a 1080p clip
    .venv/bin/python benchmarks/throughput.py --long-minutes 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "media"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "throughput.json"
PAGE = os.sysconf("SC_PAGE_SIZE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", nargs="*", type=Path, help="videos (default: shared clips)")
    parser.add_argument("--audio", type=Path, help="voice to dub with (default: speech_a.wav)")
    parser.add_argument("--no-1080p", action="store_true", help="skip the upscaled 1080p clip")
    parser.add_argument("--long-minutes", type=float, default=0.0, help="add a long 1080p run")
    parser.add_argument("--json", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lipsync-bench-"))
    clips = args.clips or sorted(SHARED.glob("talk*.mp4"))
    audio = args.audio or _default_audio(work)
    if not args.no_1080p and clips:
        clips.append(make_1080p(clips[0], work / "clip_1080p.mp4", seconds=None))

    rows = [measure(clip, audio, work) for clip in clips]
    if args.long_minutes > 0:
        rows.append(measure_long(clips[0] if clips else None, audio, work, args.long_minutes))

    print_table(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": _machine(), "runs": rows}, indent=2))
    print(f"\nwritten: {args.json}")
    return 0


def measure(clip: Path, audio: Path, work: Path) -> dict:
    """Pass-through and dub of one clip, side by side."""
    info = av.open(str(clip)).streams.video[0]
    frames = info.frames or 0
    size = f"{info.codec_context.width}x{info.codec_context.height}"

    passthrough = run_child(
        ["-c", _PASSTHROUGH, str(clip), str(work / f"{clip.stem}_pt.mp4")], "pass-through"
    )
    dubbed = run_child(
        ["-c", _DUB, str(clip), str(audio), str(work / f"{clip.stem}_dub.mp4")], "dub"
    )
    result = dubbed["result"]
    frames = result["frames_written"] or frames
    phases = {
        name: round(frames / seconds, 1) if seconds > 0 else None
        for name, seconds in result["timings"].items()
        if name != "total"
    }
    return {
        "clip": clip.name,
        "size": size,
        "frames": frames,
        "passthrough_s": round(passthrough["seconds"], 2),
        "passthrough_fps": round(frames / passthrough["seconds"], 1),
        "dub_s": round(dubbed["seconds"], 2),
        "dub_fps": round(frames / dubbed["seconds"], 1),
        "ratio": round(dubbed["seconds"] / passthrough["seconds"], 2),
        "phase_fps": phases,
        "phase_s": {k: round(v, 2) for k, v in result["timings"].items()},
        "peak_rss_mb": dubbed["peak_rss_mb"],
        "passthrough_peak_rss_mb": passthrough["peak_rss_mb"],
    }


def measure_long(clip: Path | None, audio: Path, work: Path, minutes: float) -> dict:
    """A long 1080p input, made by repeating a 10 s 1080p clip without re-encoding."""
    base = make_1080p(clip, work / "long_base.mp4", seconds=10.0) if clip else None
    if base is None:
        raise SystemExit("the long run needs a clip to repeat")
    long_video = repeat_video(base, work / "long_1080p.mp4", minutes * 60.0)
    long_audio = repeat_audio(audio, work / "long_voice.wav", minutes * 60.0)
    row = measure(long_video, long_audio, work)
    row["clip"] = f"synthetic {minutes:g} min 1080p"
    return row


# The measured work runs in a child process, so its memory is its own.
_PASSTHROUGH = """
import sys, time, json
from lipsync.export import transcode_passthrough
tick = time.perf_counter()
transcode_passthrough(sys.argv[1], sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - tick}))
"""
_DUB = """
import sys, time, json
from lipsync.pipeline import dub  # imports (MediaPipe, numba) are start-up, not throughput
tick = time.perf_counter()
r = dub(sys.argv[1], sys.argv[2], output=sys.argv[3], use_cache=False)
seconds = time.perf_counter() - tick
print(json.dumps({"seconds": seconds, "result": {
    "frames_written": r.frames_written, "frames_changed": r.frames_changed,
    "timings": r.timings}}))
"""


def run_child(code_args: list[str], label: str) -> dict:
    """Run a Python snippet in a child, sampling the resident memory of its process tree."""
    child = subprocess.Popen(
        [sys.executable, *code_args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(child.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = child.communicate()
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"{label} failed with exit status {child.returncode}")
    report = json.loads(out.decode().strip().splitlines()[-1])
    report["peak_rss_mb"] = round(peak[0] / 2**20, 1)
    return report


def tree_rss(root: int) -> int:
    """Resident bytes of a process and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        rss[int(entry)] = int(fields[21]) * PAGE
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(child for child, parent in parents.items() if parent == pid)
    return total


def make_1080p(clip: Path, out: Path, seconds: float | None) -> Path:
    """Upscale a clip to 1920x1080 (face centred, sides mirrored), keeping its audio."""
    with av.open(str(clip)) as src, av.open(str(out), "w") as dst:
        vin = src.streams.video[0]
        rate = vin.average_rate or Fraction(25)
        vout = dst.add_stream("libx264", rate=rate, options={"crf": "16", "preset": "veryfast"})
        vout.width, vout.height, vout.pix_fmt = 1920, 1080, "yuv420p"
        limit = None if seconds is None else int(seconds * rate)
        for count, frame in enumerate(src.decode(vin)):
            if limit is not None and count >= limit:
                break
            image = frame.to_ndarray(format="rgb24")
            square = cv2.resize(image, (1080, 1080), interpolation=cv2.INTER_CUBIC)
            wide = cv2.copyMakeBorder(square, 0, 0, 420, 420, cv2.BORDER_REFLECT)
            new = av.VideoFrame.from_ndarray(wide, format="rgb24")
            new.pts = count
            new.time_base = Fraction(1) / rate
            for packet in vout.encode(new):
                dst.mux(packet)
        for packet in vout.encode():
            dst.mux(packet)
    return out


def repeat_video(clip: Path, out: Path, seconds: float) -> Path:
    """Concatenate a clip with itself by stream copy until it lasts ``seconds``."""
    with av.open(str(clip)) as probe:
        stream = probe.streams.video[0]
        span = int(stream.duration or (probe.duration * stream.time_base.denominator / 1e6))
    with av.open(str(out), "w") as dst:
        offset = 0
        copies = int(np.ceil(seconds / (span * float(stream.time_base))))
        template = None
        for _ in range(copies):
            with av.open(str(clip)) as src:
                vin = src.streams.video[0]
                if template is None:
                    template = dst.add_stream_from_template(vin)
                for packet in src.demux(vin):
                    if packet.pts is None:
                        continue
                    packet.pts += offset
                    packet.dts += offset
                    packet.stream = template
                    dst.mux(packet)
            offset += span
    return out


def repeat_audio(audio: Path, out: Path, seconds: float) -> Path:
    """A WAV that repeats ``audio`` until it lasts ``seconds``."""
    import wave

    from lipsync.media import load_audio

    samples, rate = load_audio(audio, rate=16000, mono=True)
    reps = int(np.ceil(seconds * rate / samples.shape[1]))
    pcm = (np.tile(samples[0], reps)[: int(seconds * rate)] * 32767).astype("<i2")
    with wave.open(str(out), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
    return out


def _default_audio(work: Path) -> Path:
    shared = SHARED / "speech_a.wav"
    if shared.exists():
        return shared
    from lipsync.demo import make_demo_inputs

    return make_demo_inputs(work).audio


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0], "time": time.ctime()}


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'clip':<26} {'size':>9} {'frames':>6} {'pass fps':>8} {'dub fps':>8} "
        f"{'ratio':>6} {'scenes':>7} {'faces':>7} {'gen':>7} {'export':>7} {'peak MB':>8}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        fps = row["phase_fps"]
        print(
            f"{row['clip']:<26} {row['size']:>9} {row['frames']:>6} "
            f"{row['passthrough_fps']:>8} {row['dub_fps']:>8} {row['ratio']:>6} "
            f"{fps.get('scenes', '-'):>7} {fps.get('faces', '-'):>7} "
            f"{fps.get('generate', '-'):>7} {fps.get('export', '-'):>7} {row['peak_rss_mb']:>8}"
        )
    print("\nper-phase columns are frames per second of that phase alone")


if __name__ == "__main__":
    raise SystemExit(main())
