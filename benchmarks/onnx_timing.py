"""One timing loop for the ONNX benchmarks (generator.py, landmarks.py): a session's runs
per second on fixed inputs, after warm-up runs, over at least a given time and three runs."""

from __future__ import annotations

import time


def open_session(path, providers: list, threads: int | None = None):
    """An onnxruntime session with its warnings silenced (they are not the figures)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=providers)


def timed_runs(session, feeds: dict, seconds: float, warmup: int = 2) -> tuple[int, float]:
    """(runs, elapsed seconds) of ``session`` on ``feeds`` after ``warmup`` untimed runs."""
    for _ in range(warmup):
        session.run(None, feeds)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or runs < 3:
        session.run(None, feeds)
        runs += 1
    return runs, time.perf_counter() - started
