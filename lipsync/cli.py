"""The command line: ``python -m lipsync dub | batch | inspect | eval | demo | models | serve |
worker``.

All printing and exit codes live here; the library only returns results and raises.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from . import __version__
from .errors import (
    DataCorruptedError,
    InvalidFormatError,
    InvalidOptionError,
    LimitExceededError,
    LipsyncError,
    NoFaceFoundError,
)

# One exit status per error class, so scripts can tell failures apart without parsing text.
EXIT_CODES: dict[type[LipsyncError], int] = {
    InvalidOptionError: 2,
    InvalidFormatError: 3,
    DataCorruptedError: 4,
    NoFaceFoundError: 5,
    LimitExceededError: 6,
}
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO)

    try:
        with _native_logs_hidden(enabled=not args.verbose):
            return args.run(args)
    except LipsyncError as exc:
        print(f"error: {exc.code} {exc.name}: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


@contextmanager
def _native_logs_hidden(enabled: bool):
    """Keep MediaPipe's C++ start-up warnings off the terminal (``-v`` shows them).

    They are written straight to file descriptor 2 by native code, in this process and in
    the face workers it spawns, so Python's logging cannot filter them. Descriptor 2 goes
    to /dev/null for the duration while ``sys.stderr``, which the progress bars and our
    own messages use, keeps writing to the real terminal through a duplicate.
    """
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (an embedding host): leave it be
        yield
        return

    original = sys.stderr
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    sys.stderr = terminal
    try:
        yield
    finally:
        terminal.flush()
        sys.stderr = original
        os.dup2(saved, 2)
        for fd in (saved, devnull):
            os.close(fd)
        terminal.close()


def exit_code(exc: LipsyncError) -> int:
    """The process exit status for a library error."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_INTERNAL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lipsync",
        description="Local, offline visual dubbing: make a speaker's mouth follow a new voice.",
    )
    parser.add_argument("--version", action="version", version=f"lipsync {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log progress")
    commands = parser.add_subparsers(dest="command", required=True)

    dub = commands.add_parser("dub", help="dub a video with a new voice track")
    dub.add_argument("video", type=Path, help="talking-head video (.mp4 or .mov)")
    dub.add_argument("audio", type=Path, help="new voice (.wav, .mp3, or a video's soundtrack)")
    dub.add_argument("-o", "--output", type=Path, help="output video (default: VIDEO_dubbed.mp4)")
    _add_dub_options(dub)
    dub.set_defaults(run=_run_dub)

    batch = commands.add_parser(
        "batch",
        help="dub every item of a list or folder (exit 0: all ok or skipped, 1: any failed)",
    )
    batch.add_argument(
        "list",
        type=Path,
        help="CSV (video,audio,output[,option...]), JSONL, or a folder of videos and voices "
        "named after them (talk.mp4 + talk.fr.wav)",
    )
    batch.add_argument(
        "--output-dir", type=Path, help="folder mode: where the dubs go (default: LIST/dubbed)"
    )
    batch.add_argument("--intensity", type=int, choices=(1, 2, 3), help="for every item")
    batch.add_argument("--model", help="generator for every item (default e1)")
    batch.add_argument("--jobs", type=int, default=1, help="videos dubbed at once (default 1)")
    batch.add_argument(
        "--summary", type=Path, help="summary JSON (default: LIST's name + .summary.json)"
    )
    batch.add_argument("--json", action="store_true", help="print the summary as JSON")
    batch.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    batch.set_defaults(run=_run_batch)

    inspect = commands.add_parser("inspect", help="list a video's scenes and faces")
    inspect.add_argument("video", type=Path)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument("--faces", type=_faces_arg, default="largest", metavar="WHICH")
    inspect.add_argument("--no-cache", action="store_true", help="recompute the scene list")
    inspect.set_defaults(run=_run_inspect)

    demo = commands.add_parser("demo", help="build a sample input and dub it")
    demo.add_argument("-o", "--output-dir", type=Path, default=Path("lipsync-demo"))
    demo.add_argument("--intensity", type=int, choices=(1, 2, 3), default=2)
    demo.add_argument("--seconds", type=float, default=4.0, help="length of the sample video")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=_run_demo)

    evaluate = commands.add_parser(
        "eval", help="score how well the mouth in a video follows a voice (lip sync)"
    )
    evaluate.add_argument("video", type=Path, help="talking-head video (.mp4 or .mov)")
    evaluate.add_argument(
        "audio", type=Path, nargs="?", help="voice to compare with (default: the video's sound)"
    )
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--plot", type=Path, metavar="OUT.png", help="write a picture")
    evaluate.add_argument("--start", type=float, default=0.0, help="first second to score")
    evaluate.add_argument("--end", type=float, help="last second to score (default: the end)")
    evaluate.add_argument("--max-lag", type=int, default=8, help="frames searched either way")
    evaluate.add_argument("--workers", type=int, help="face-analysis processes")
    evaluate.add_argument("--no-cache", action="store_true", help="recompute the scene list")
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(run=_run_eval)

    models = commands.add_parser(
        "models", help="list the lip-sync models, or import or download one"
    )
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(run=_run_models_list)
    actions = models.add_subparsers(dest="models_action")
    listing = actions.add_parser("list", help="list models (the default)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=_run_models_list)
    adding = actions.add_parser(
        "import", help="check an ONNX file (or convert the authors' .pth) and install it"
    )
    adding.add_argument(
        "path", type=Path, help="the model's .onnx file or .pth checkpoint (it is not changed)"
    )
    adding.add_argument("--name", help="name jobs use (default: e2/e3 by file name, else stem)")
    adding.add_argument("--contract", help="input contract from the manifest (default: wav2lip96)")
    adding.add_argument("--json", action="store_true", help="print JSON instead of text")
    adding.set_defaults(run=_run_models_import)
    pull = actions.add_parser("pull", help="download a model, check it and install it")
    pull.add_argument("name", help="a manifest model (e2, e3) or a name of your own with --url")
    pull.add_argument("--url", help="download from here instead of the manifest's source")
    pull.add_argument("--json", action="store_true", help="print JSON instead of text")
    pull.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pull.set_defaults(run=_run_models_pull)

    serve = commands.add_parser(
        "serve", help="run the REST shim (keys from LIPSYNC_API_KEYS; needs lipsync[server])"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        help="local job processes (jobs run at the same time); default 1, or 0 with --queue "
        "redis://, whose workers run elsewhere",
    )
    serve.add_argument(
        "--keys-file", type=Path, help="TOML file of keys and quotas (or LIPSYNC_API_KEYS_FILE)"
    )
    serve.add_argument(
        "--allow-private-urls",
        action="store_true",
        default=os.environ.get("LIPSYNC_ALLOW_PRIVATE_URLS", "") not in ("", "0"),
        help="let URL assets and webhooks reach loopback/private/link-local addresses "
        "(or LIPSYNC_ALLOW_PRIVATE_URLS=1)",
    )
    serve.add_argument(
        "--queue",
        default="sqlite",
        help="job queue: sqlite (embedded, the default) or redis://HOST[:PORT][/DB] for "
        "workers on other machines (needs LIPSYNC_WORKER_TOKEN and lipsync[queue])",
    )
    _add_lease_option(serve, "local ")
    serve.add_argument(
        "--check-interval",
        type=float,
        default=2.0,
        help="seconds between looks for abandoned jobs (default 2)",
    )
    serve.set_defaults(run=_run_serve)

    worker = commands.add_parser(
        "worker",
        help="run jobs for a shim from its Redis queue, on any machine (LIPSYNC_WORKER_TOKEN; "
        "needs lipsync[queue])",
    )
    worker.add_argument("--queue", required=True, help="redis://HOST[:PORT][/DB] of the shim")
    worker.add_argument(
        "--shim",
        default="http://127.0.0.1:8000",
        help="the shim's root URL, where inputs come from and results go (default %(default)s)",
    )
    _add_lease_option(worker)
    worker.add_argument(
        "--face-workers", type=int, help="face-analysis processes per job (default: all cores)"
    )
    worker.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=60.0,
        help="seconds a silent worker's Redis messages stay unacknowledged before going back "
        "on the queue (default 60)",
    )
    worker.add_argument(
        "--stop-grace",
        type=float,
        default=600.0,
        help="seconds a stopping worker (SIGTERM, Ctrl-C) lets its running job end; a job "
        "cut short runs again elsewhere once its lease runs out (default 600)",
    )
    worker.add_argument(
        "--shim-retry",
        type=float,
        default=120.0,
        help="seconds to keep retrying a shim that does not answer (default 120)",
    )
    worker.set_defaults(run=_run_worker)
    return parser


def _add_lease_option(sub: argparse.ArgumentParser, whose: str = "") -> None:
    sub.add_argument(
        "--lease",
        type=float,
        default=60.0,
        help=f"seconds a {whose}worker's claim holds without renewal; a worker silent that "
        "long is taken as dead and its job runs again (default 60)",
    )


def _add_dub_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--intensity", type=int, choices=(1, 2, 3), default=2)
    sub.add_argument(
        "--model", default="e1", help="generator: e1 (built in), e2, e3 or an imported model"
    )
    sub.add_argument(
        "--faces", type=_faces_arg, default="largest", help="largest (default), all, or an index"
    )
    sub.add_argument("--length", choices=("video", "audio"), default="video")
    sub.add_argument("--crf", type=int, default=18, help="x264 quality (18: visually lossless)")
    sub.add_argument("--preset", default="veryfast", help="x264 preset")
    sub.add_argument("--max-duration", type=float, default=3600.0, help="seconds (ERR_009)")
    sub.add_argument("--workers", type=int, help="face-analysis processes (default: all cores)")
    sub.add_argument(
        "--landmarker",
        choices=("mediapipe", "onnx"),
        default="mediapipe",
        help="face engine: mediapipe (CPU, default) or onnx (batched on onnxruntime, a GPU "
        "where present)",
    )
    sub.add_argument(
        "--batch-size", type=int, default=16, help="frames per generator run (default 16)"
    )
    sub.add_argument(
        "--precision",
        choices=("auto", "fp32", "fp16"),
        default="auto",
        help="ONNX models (e2, e3, yours): auto (default: fp16 on a GPU, fp32 on the CPU), "
        "fp32 or fp16",
    )
    sub.add_argument(
        "--no-cache", action="store_true", help="recompute the scene list and the faces"
    )
    sub.add_argument("--json", action="store_true", help="print the result as JSON")
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _faces_arg(value: str) -> str | int:
    if value in ("largest", "all"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("use 'largest', 'all' or a face index") from None


class _Bars:
    """One progress bar per phase, one line each: a phase's bar closes when the next begins.

    ``leave=False`` and a ``position`` (a line under another bar) draw each phase's bar on
    one line that is cleared when it closes: a batch's current item under the batch's bar.
    """

    def __init__(self, enabled: bool, *, leave: bool = True, position: int | None = None):
        self.enabled = enabled
        self.leave = leave
        self.position = position
        self.label = ""  # shown before the phase (the batch item's name)
        self.phase: str | None = None
        self.bar: tqdm | None = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = tqdm(
                total=total,
                desc=f"{self.label}{phase:>8}",
                unit="frame",
                leave=self.leave,
                position=self.position,
            )
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _run_dub(args: argparse.Namespace) -> int:
    from .pipeline import dub

    bars = _Bars(enabled=not (args.quiet or args.json))
    try:
        result = dub(
            args.video,
            args.audio,
            intensity=args.intensity,
            model=args.model,
            output=args.output,
            progress=bars,
            faces=args.faces,
            length=args.length,
            crf=args.crf,
            preset=args.preset,
            max_duration=args.max_duration,
            workers=args.workers,
            use_cache=not args.no_cache,
            landmarker=args.landmarker,
            batch_size=args.batch_size,
            precision=args.precision,
        )
    finally:
        bars.close()

    if args.json:
        print(json.dumps(_result_json(result), indent=2))
    else:
        print(_result_text(result))
    return 0


def _result_json(result) -> dict:
    return {
        "output": str(result.output),
        "duration": round(result.duration, 3),
        "engine": result.engine,
        "frames_written": result.frames_written,
        "frames_changed": result.frames_changed,
        "frames_with_face": result.frames_with_face,
        "faces_found": result.faces_found,
        "scenes": len(result.scenes),
        "scenes_from_cache": result.scenes_from_cache,
        "faces_from_cache": result.faces_from_cache,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
    }


def _result_text(result) -> str:
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items() if k != "total")
    return (
        f"wrote {result.output} ({result.engine})\n"
        f"  {result.frames_written} frames ({result.duration:.2f} s), "
        f"{result.frames_changed} re-rendered; {len(result.scenes)} scene(s)"
        f"{' (cached)' if result.scenes_from_cache else ''}, {result.faces_found} face track(s)"
        f"{' (cached)' if result.faces_from_cache else ''}\n"
        f"  {phases}; total {result.timings['total']:.1f}s"
    )


def _run_batch(args: argparse.Namespace) -> int:
    """Exit 0 when every item is ok or skipped, 1 when any failed (see the summary)."""
    from .batch import DUBBED_FOLDER, read_folder, read_list, run_batch, summary_table

    # The command's options apply to every item; a list's own columns take precedence.
    options = {"intensity": args.intensity, "model": args.model}
    options = {name: value for name, value in options.items() if value is not None}
    if args.list.is_dir():
        items = read_folder(args.list, args.output_dir, options)
        summary_path = (
            args.summary or (args.output_dir or args.list / DUBBED_FOLDER) / "summary.json"
        )
    elif args.output_dir is not None:
        raise InvalidOptionError("--output-dir is for a folder; a list names its outputs")
    else:
        items = read_list(args.list, options)
        summary_path = args.summary or args.list.with_name(f"{args.list.stem}.summary.json")
    bar = None
    shown = not (args.quiet or args.json)
    if shown:
        bar = tqdm(total=len(items), desc="   batch", unit="item", position=0)
    # The item under way, phase by phase, on the line below (items run in this process).
    current = _Bars(enabled=shown, leave=False, position=1)

    def progress(done: int, total: int, result) -> None:
        current.close()
        current.phase = None
        bar.set_postfix_str(f"{Path(result.output).name} {result.status}")
        bar.update(done - bar.n)

    def item_progress(index: int, phase: str, done: int, total: int) -> None:
        current.label = f"{items[index].output.name}: "
        current(phase, done, total)

    try:
        summary = run_batch(
            items,
            jobs=args.jobs,
            progress=None if bar is None else progress,
            item_progress=item_progress if shown else None,
            summary_path=summary_path,
        )
    finally:
        current.close()
        if bar is not None:
            bar.close()

    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary_table(summary))
        print(f"summary: {summary_path}")
    return 1 if summary.failed else 0


def _run_inspect(args: argparse.Namespace) -> int:
    from .faces import detect_faces
    from .media import validate_video
    from .scenes import detect_scenes

    info = validate_video(args.video)
    scenes = detect_scenes(info, use_cache=not args.no_cache)
    faces = detect_faces(info, scenes.scenes, select=args.faces)

    rows = []
    for scene in scenes.scenes:
        with_face = sum(1 for i in range(scene.start, scene.end) if faces.tracks_at(i))
        rows.append(
            {
                "scene": scene.index,
                "start_frame": scene.start,
                "end_frame": scene.end,
                "start_time": round(scene.start_time, 3),
                "end_time": round(scene.end_time, 3),
                "faces": faces.faces_in_scene(scene.index),
                "frames_with_face": with_face,
            }
        )

    if args.json:
        summary = {
            "video": str(args.video),
            "width": info.width,
            "height": info.height,
            "fps": float(info.fps),
            "frames": info.frame_count,
            "duration": round(info.duration, 3),
            "rotation": info.rotation,
            "scenes": rows,
        }
        print(json.dumps(summary, indent=2))
        return 0

    print(
        f"{args.video.name}: {info.width}x{info.height}, {float(info.fps):.3f} fps, "
        f"{info.frame_count} frames, {info.duration:.2f} s"
        + (f", rotation {info.rotation}" if info.rotation else "")
    )
    print(f"{'scene':>5}  {'frames':>13}  {'time (s)':>15}  {'faces':>5}  {'with face':>9}")
    for row in rows:
        frames = f"{row['start_frame']}-{row['end_frame'] - 1}"
        times = f"{row['start_time']:.2f}-{row['end_time']:.2f}"
        print(
            f"{row['scene']:>5}  {frames:>13}  {times:>15}  {row['faces']:>5}  "
            f"{row['frames_with_face']:>9}"
        )
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import make_demo_inputs
    from .pipeline import dub
    from .report import contact_sheet

    folder = args.output_dir
    folder.mkdir(parents=True, exist_ok=True)
    inputs = make_demo_inputs(folder, seconds=args.seconds)
    output = folder / "demo_dubbed.mp4"

    bars = _Bars(enabled=not args.quiet)
    try:
        result = dub(
            inputs.video, inputs.audio, intensity=args.intensity, output=output, progress=bars
        )
    finally:
        bars.close()

    sheet = contact_sheet(inputs.video, output, folder / "demo_contact.png")
    print(f"sample video: {inputs.video}\nsample voice: {inputs.audio}")
    print(_result_text(result))
    print(f"contact sheet (original above, dubbed below): {sheet}")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate
    from .report import plot_report

    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise InvalidOptionError(f"--plot must name a .png file, got {args.plot}")
    if args.plot is not None and not args.plot.resolve().parent.is_dir():
        raise InvalidOptionError(f"--plot: the folder {args.plot.parent} does not exist")
    end = float("inf") if args.end is None else args.end
    window = None if args.start == 0.0 and args.end is None else (args.start, end)

    bars = _Bars(enabled=not (args.quiet or args.json))
    try:
        report = evaluate(
            args.video,
            args.audio,
            window=window,
            max_lag=args.max_lag,
            use_cache=not args.no_cache,
            workers=args.workers,
            progress=bars,
        )
    finally:
        bars.close()
    if args.plot is not None:
        plot_report(report, args.plot)

    if args.json:
        summary = report.to_dict()
        if args.plot is not None:
            summary["plot"] = str(args.plot)
        print(json.dumps(summary, indent=2))
    else:
        print(_eval_text(report, args))
    return 0


def _eval_text(report, args: argparse.Namespace) -> str:
    s = report.scores

    def num(value) -> str:
        return "     -" if value is None else f"{value:6.2f}"

    voice = "its own sound" if args.audio is None else report.audio.name
    lines = [
        f"{report.video.name} with {voice}: {report.start:.2f}-{report.end:.2f} s, "
        f"{s.frames} frames ({s.face_frames} with a face, {s.speech_frames} with speech)",
        f"  sync score             {num(s.score)}   higher is better, 0 = chance "
        "(real speech on the shared clips: 0.39-0.59)",
        f"  offset                 {s.offset:+6d}   frames (> 0: mouth after the sound); "
        f"confidence {s.offset_confidence:.2f}",
        f"  viseme agreement       {num(s.viseme_auc)}   AUC, {s.open_frames} open-vowel vs "
        f"{s.closed_frames} closed-lip frames (0.5 = chance)",
        f"  envelope correlation   {num(s.envelope_corr)}   at lag {s.envelope_lag:+d}; "
        f"confidence {s.envelope_confidence:.2f}",
        f"  silent frames at rest  {num(s.silent_rest_share)}   of {s.silent_frames} silent frames",
        f"  mouth jitter           {num(s.jitter)}   % of the eye distance, where the sound "
        "is steady",
    ]
    if args.plot is not None:
        lines.append(f"plot: {args.plot}")
    return "\n".join(lines)


def _run_models_list(args: argparse.Namespace) -> int:
    from .models import list_models

    statuses = list_models()
    if args.json:
        print(json.dumps([s.to_dict() for s in statuses], indent=2))
        return 0

    print(f"{'name':<16}  {'installed':>9}  {'verified':>8}  {'title':<16}  licence")
    for s in statuses:
        print(
            f"{s.name:<16}  {_yes(s.installed):>9}  {_yes(s.verified):>8}  "
            f"{s.title or '-':<16}  {s.licence or '-'}"
        )
    return 0


def _run_models_import(args: argparse.Namespace) -> int:
    from .models import import_onnx

    status = import_onnx(args.path, name=args.name, contract=args.contract)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
    else:
        print(f"installed {status.name}: {status.path} (sha256 {status.sha256})")
    return 0


def _run_models_pull(args: argparse.Namespace) -> int:
    from .downloads import pull_model

    bar = None
    if not (args.quiet or args.json):
        bar = tqdm(desc=f"{args.name:>8}", unit="B", unit_scale=True, unit_divisor=1024)

    def progress(done: int, total: int | None) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        status = pull_model(args.name, url=args.url, progress=None if bar is None else progress)
    finally:
        if bar is not None:
            bar.close()

    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
    else:
        print(f"installed {status.name}: {status.path} (sha256 {status.sha256})")
    return 0


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _run_serve(args: argparse.Namespace) -> int:
    from .errors import MissingDependencyError

    try:
        from .server.app import serve
    except ImportError as exc:
        raise MissingDependencyError(
            f"the REST shim needs FastAPI and uvicorn ({exc.name} is missing)",
            hint="pip install 'lipsync[server]'",
        ) from exc
    from .server.jobs import JobSettings

    backend, url = _queue_arg(args.queue)
    workers = args.workers if args.workers is not None else (1 if backend == "sqlite" else 0)
    serve(
        args.host,
        args.port,
        workers,
        keys_file=args.keys_file,
        allow_private_urls=args.allow_private_urls,
        queue=backend,
        queue_url=url,
        jobs=JobSettings(lease=args.lease, check_interval=args.check_interval),
    )
    return 0


def _run_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .errors import MissingDependencyError

    try:
        from .server.jobs import JobSettings
        from .server.redisqueue import RedisOptions
        from .server.remoteworker import WorkerOptions, run_worker
    except ImportError as exc:
        raise MissingDependencyError(
            f"the worker needs the queue extra ({exc.name} is missing)",
            hint="pip install 'lipsync[queue]'",
        ) from exc

    backend, url = _queue_arg(args.queue)
    token = os.environ.get("LIPSYNC_WORKER_TOKEN", "")
    if backend != "redis" or url is None:
        raise InvalidOptionError(f"a worker needs --queue redis://HOST, got {args.queue!r}")
    if not token:
        raise InvalidOptionError(
            "no worker token", hint="set LIPSYNC_WORKER_TOKEN to the shim's worker secret"
        )
    options = WorkerOptions(
        shim=args.shim,
        token=token,
        redis=RedisOptions(url=url, heartbeat_timeout=args.heartbeat_timeout),
        jobs=JobSettings(
            lease=args.lease, face_workers=args.face_workers, stop_grace=args.stop_grace
        ),
        shim_retry=args.shim_retry,
    )

    # Both signals end the worker the same way: the job in hand gets its grace, then exit.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_worker(options, stop)
    return 0


def _queue_arg(text: str) -> tuple[str, str | None]:
    """``--queue``: a backend name, or a server address whose scheme names the backend."""
    scheme, sep, _ = text.partition("://")
    if not sep:
        return text, None
    if scheme in ("redis", "rediss"):
        return "redis", text
    raise InvalidOptionError(f"unknown job queue address {text!r}", hint="use redis://HOST:PORT")
