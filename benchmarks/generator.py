"""How many face crops per second does an ONNX generator run, by batch, provider and precision?

The model is an installed one (``--model e2``), any ONNX file honouring the wav2lip96
contract (``--onnx PATH``), or, by default, our Wav2Lip architecture with random weights
exported to ONNX (needs the ``convert`` extra: torch): the speed does not depend on the
weights. Each (provider, precision, batch) cell gets its own session, two warm-up runs,
then timed runs; the table is printed and written as JSON. Precision fp16 is, on TensorRT,
its own fp16 engine built from the float32 model, and elsewhere our float16 copy of the
model (``lipsync.half``), as the generator runs it. ``--dub CLIP AUDIO`` adds one whole dub
with that model and reports it against the clip's duration (times real time).

    .venv/bin/python benchmarks/generator.py
    .venv/bin/python benchmarks/generator.py --providers CUDAExecutionProvider --batches 1 32 128
    .venv/bin/python benchmarks/generator.py --precisions fp32 fp16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx_timing import open_session, timed_runs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "generator.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an installed model name (e.g. e2)")
    parser.add_argument("--onnx", type=Path, help="an ONNX file honouring wav2lip96")
    parser.add_argument("--providers", nargs="*", help="onnxruntime providers to try")
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 4, 16, 32, 64])
    parser.add_argument("--precisions", nargs="*", choices=("fp32", "fp16"), default=["fp32"])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed run per cell")
    parser.add_argument("--dub", nargs=2, metavar=("CLIP", "AUDIO"), help="also time a dub")
    parser.add_argument("--json", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    import onnxruntime as ort

    from lipsync.models import load_contract

    contract = load_contract("wav2lip96")
    path = model_file(args)
    providers = args.providers or [
        p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
        if p in ort.get_available_providers()
    ]  # fmt: skip

    rows = []
    halves = {}
    for provider in providers:
        for precision in args.precisions:
            model, options = path, {}
            if precision == "fp16" and provider == "TensorrtExecutionProvider":
                options = {"trt_fp16_enable": True}
            elif precision == "fp16":
                halves[provider] = half_copy(path, provider)
                model = halves[provider].pop("path")
            for batch in args.batches:
                row = measure(model, contract, provider, options, batch, args.seconds)
                rows.append({"precision": precision, **row})
                print(
                    f"{provider:<28} {precision} batch {batch:>4}: "
                    f"{row['crops_per_s']:>9.1f} crops/s",
                    flush=True,
                )

    report = {"model": str(path), "cpus": os.cpu_count(), "fp16_copies": halves, "runs": rows}
    if args.dub:
        report["dub"] = time_dub(args.model or "e2", *args.dub)
        print(f"dub: {report['dub']['times_real_time']:.2f}x real time")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"written: {args.json}")
    return 0


def model_file(args) -> Path:
    """The ONNX file to time: given, installed, or our architecture with random weights."""
    if args.onnx:
        return args.onnx
    if args.model:
        from lipsync.models import require_model

        return require_model(args.model).path
    from lipsync.convert.wav2lip import Wav2Lip96, export_onnx

    out = Path(tempfile.mkdtemp(prefix="lipsync-gen-")) / "wav2lip_random.onnx"
    export_onnx(Wav2Lip96().eval(), out)
    return out


def half_copy(path: Path, provider: str) -> dict:
    """The generator's float16 copy of the model, checked against it on ``provider``; kept
    in a temporary folder, not the user's cache (a random model is new on every run)."""
    from lipsync.cache import file_digest
    from lipsync.half import half_copy as make
    from lipsync.models import load_contract

    folder = Path(tempfile.mkdtemp(prefix="lipsync-gen-"))
    made = make(path, file_digest(path), load_contract("wav2lip96"), provider, folder=folder)
    print(f"{provider:<28} fp16 copy: max abs difference {made.max_abs_diff:.1e}", flush=True)
    return made.to_dict()


def measure(
    path: Path, contract, provider: str, provider_options: dict, batch: int, seconds: float
) -> dict:
    """Crops per second of one session at one batch size."""
    session = open_session(path, [(provider, provider_options)])
    rng = np.random.default_rng(0)
    feeds = {
        contract.mel_input: rng.uniform(-4, 4, (batch, 1, 80, 16)).astype(np.float32),
        contract.video_input: rng.uniform(0, 1, (batch, 6, 96, 96)).astype(np.float32),
    }
    runs, elapsed = timed_runs(session, feeds, seconds)
    return {
        "provider": provider,
        "batch": batch,
        "runs": runs,
        "seconds": round(elapsed, 3),
        "crops_per_s": round(runs * batch / elapsed, 1),
    }


def time_dub(model: str, clip: str, audio: str) -> dict:
    from lipsync.media import probe_video
    from lipsync.pipeline import dub

    out = Path(tempfile.mkdtemp(prefix="lipsync-gen-")) / "dub.mp4"
    tick = time.perf_counter()
    result = dub(clip, audio, model=model, output=out, use_cache=False)
    seconds = time.perf_counter() - tick
    duration = probe_video(clip).duration
    return {
        "clip": clip,
        "seconds": round(seconds, 2),
        "video_seconds": round(duration, 2),
        "times_real_time": round(duration / seconds, 2),
        "timings": {k: round(v, 2) for k, v in result.timings.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
