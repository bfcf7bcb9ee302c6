"""MediaPipe's face models as ONNX files: converted once, kept under LIPSYNC_HOME, run batched.

The mediapipe wheel bundles its face detectors and face mesh as TFLite files.
:func:`convert_face_models` turns them into ONNX files (our own converter,
:mod:`lipsync.convert.tflite`, needing the ``convert`` extra) under
``models_home()/mediapipe``, and records each file's SHA-256 and the SHA-256 of the TFLite
file it came from in ``face_models.json``. :func:`face_model_paths` checks that record
before a session is opened: a changed or damaged file is converted again when the
converter is installed, and refused with a typed error saying how to convert otherwise.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from ..cache import file_digest, write_json_atomic
from ..errors import DataCorruptedError, MissingDependencyError, ModelNotInstalledError
from ..models import models_home
from ..ortrun import run_session
from . import graph

logger = logging.getLogger(__name__)

# Bump when the converter's output changes, so files converted before are converted again.
CONVERTER_VERSION = 1
RECORD_FILE = "face_models.json"
# name -> the TFLite file inside the mediapipe package.
SOURCES = {
    "face_detection_short_range": "modules/face_detection/face_detection_short_range.tflite",
    "face_detection_full_range": "modules/face_detection/face_detection_full_range_sparse.tflite",
    "face_landmark": "modules/face_landmark/face_landmark.tflite",
}
# TensorRT is left out unless asked for: the lanes' batches change size as runs end, and it
# builds a new engine (seconds) for every new shape.
PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
_CONVERT_HINT = "run: python scripts/convert_mediapipe.py (needs pip install 'lipsync[convert]')"


def face_models_dir() -> Path:
    """Where the converted face models live: ``models_home()/mediapipe``."""
    return models_home() / "mediapipe"


def bundled_tflite(name: str) -> Path:
    """The TFLite file the installed mediapipe wheel bundles for a face model."""
    spec = find_spec("mediapipe")  # found without importing mediapipe (slow to import)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the face models come from the mediapipe package", hint="pip install mediapipe==0.10.21"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SOURCES[name]
    if not path.is_file():
        raise MissingDependencyError(
            f"this mediapipe installation lacks {SOURCES[name]}",
            hint="pip install mediapipe==0.10.21 (the last release bundling the face models)",
        )
    return path


def convert_face_models(force: bool = False) -> dict[str, dict]:
    """Convert the bundled face models to ONNX under :func:`face_models_dir`, once.

    Files whose record still matches (same TFLite source, same converter, same bytes) are
    kept unless ``force``. Returns the record: name -> file, sha256, source, source_sha256.

    Raises:
        MissingDependencyError: the ``tflite`` package (the convert extra) or mediapipe is
            missing.
        InvalidFormatError: a bundled model holds an op the converter lacks.
    """
    from ..convert.tflite import convert_tflite

    folder = face_models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    record = {} if force else _read_record()
    for name in SOURCES:
        source = bundled_tflite(name)
        if not force and _problem(name, record.get(name), source) is None:
            continue
        target = folder / f"{name}.onnx"
        report = convert_tflite(source, target)
        record[name] = {
            "file": target.name,
            "sha256": file_digest(target),
            "source": str(source),
            "source_sha256": file_digest(source),
            "converter": CONVERTER_VERSION,
            "ops": report.ops,
        }
        logger.info("face model %s converted (%d constants folded)", name, report.folded)
    _write_record(record)
    return record


def face_model_paths(convert: bool = True) -> dict[str, Path]:
    """The verified ONNX file of every face model, converting them first when needed.

    Args:
        convert: convert missing or stale files when the converter is installed.

    Raises:
        ModelNotInstalledError: a file is missing or stale and cannot be converted here
            (the hint names the script to run).
        DataCorruptedError: a converted file no longer matches its recorded SHA-256 and
            cannot be converted again here.
    """
    record = _read_record()
    problems = {name: _problem(name, record.get(name), bundled_tflite(name)) for name in SOURCES}
    problems = {name: why for name, why in problems.items() if why is not None}
    if problems and convert and find_spec("tflite") is not None:
        logger.info("converting the face models: %s", "; ".join(problems.values()))
        record = convert_face_models()
        problems = {}
    if problems:
        name, why = next(iter(problems.items()))
        error = DataCorruptedError if "SHA-256" in why else ModelNotInstalledError
        raise error(f"the ONNX face models are not ready: {why}", hint=_CONVERT_HINT)
    return {name: face_models_dir() / record[name]["file"] for name in SOURCES}


def _problem(name: str, entry: dict | None, source: Path) -> str | None:
    """Why a recorded face model cannot be used as it is; None when it can."""
    if entry is None:
        return f"{name} has not been converted"
    path = face_models_dir() / entry["file"]
    if not path.is_file():
        return f"{name}: {path} is missing"
    if entry.get("converter") != CONVERTER_VERSION:
        return f"{name} was converted by an older converter"
    if entry.get("source_sha256") != file_digest(source):
        return f"{name}: the installed mediapipe bundles a different model"
    if file_digest(path) != entry.get("sha256"):
        return f"{name}: {path} does not match its recorded SHA-256"
    return None


def _read_record() -> dict[str, dict]:
    path = face_models_dir() / RECORD_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text())["models"])
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("%s cannot be read; the face models will be converted again", path)
        return {}


def _write_record(record: dict[str, dict]) -> None:
    document = {"version": 1, "models": record}
    write_json_atomic(face_models_dir() / RECORD_FILE, document, indent=2, sort_keys=True)


@dataclass
class MeshResult:
    """The mesh's answer for one face region."""

    landmarks: np.ndarray | None  # (468, 2) normalised to the image; None: no face there
    region: graph.Region  # the region it looked in


class FaceModels:
    """One onnxruntime session per face model; every call takes a whole batch."""

    def __init__(self, providers: list[str] | None = None, threads: int | None = None) -> None:
        ort = _onnxruntime()
        paths = face_model_paths()
        if providers is None:
            available = set(ort.get_available_providers())
            providers = [p for p in PROVIDERS if p in available]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {
            name: ort.InferenceSession(str(path), options, providers=providers)
            for name, path in paths.items()
        }
        self.providers = self.sessions["face_landmark"].get_providers()
        self._anchors = {
            spec: graph.anchors(spec) for spec in (graph.SHORT_RANGE, graph.FULL_RANGE)
        }
        logger.info("ONNX face models on %s", ", ".join(self.providers))

    def detect(self, images: list[np.ndarray], spec: graph.DetectorSpec) -> list[list]:
        """The faces a detector finds on each image, best first (a list per image)."""
        if not images:
            return []
        name = (
            "face_detection_short_range"
            if spec is graph.SHORT_RANGE
            else ("face_detection_full_range")
        )
        prepared = [graph.detector_input(image, spec) for image in images]
        boxes, scores = self._run(name, np.stack([tensor for tensor, _ in prepared]))
        return [
            graph.decode_detections(boxes[i], scores[i], self._anchors[spec], spec, region)
            for i, (_, region) in enumerate(prepared)
        ]

    def mesh(self, jobs: list[tuple[np.ndarray, graph.Region]]) -> list[MeshResult]:
        """468 landmarks for each (image, region), in one batch."""
        if not jobs:
            return []
        tensors = np.stack([graph.mesh_input(image, region) for image, region in jobs])
        points, flags = self._run("face_landmark", tensors)
        results = []
        for (_, region), raw, flag in zip(jobs, points, flags, strict=True):
            found = graph.presence(flag.reshape(-1)[0])
            landmarks = graph.project_mesh(raw.reshape(-1), region) if found else None
            results.append(MeshResult(landmarks, region))
        return results

    def _run(self, name: str, batch: np.ndarray) -> list[np.ndarray]:
        session = self.sessions[name]
        return run_session(session, None, {session.get_inputs()[0].name: batch})


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(
            "the ONNX landmarker needs onnxruntime", hint="pip install onnxruntime"
        ) from exc
    return onnxruntime
