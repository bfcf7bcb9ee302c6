"""``e2`` / ``e3``: Wav2Lip-compatible ONNX generators, run on onnxruntime.

The model re-draws a 96 px face crop whose lower half it cannot see, from a mel window
and a reference crop. Everything around it is ours: the crop comes from the smoothed
face-mesh landmarks, batches go through one onnxruntime session (TensorRT, then CUDA,
then the CPU, whichever this installation has; float16 on a GPU), and the generated crop
is scaled back and blended in through e1's feathered lower-face mask with its colour
matched to the frame, so no rectangle is ever pasted and nothing outside the mask changes.
"""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np

from ..audio import AudioFeatures
from ..cache import cache_dir, file_digest
from ..errors import InternalError, MissingDependencyError
from ..kernels import blend_masked
from ..models import ModelContract, ModelStatus
from ..ortrun import run_session
from .base import FaceFrame, Generator, SourceVideo
from .e1 import lower_face_alpha

logger = logging.getLogger(__name__)

# The crop: a square around the landmarks' box, this much wider than the box, and moved
# down a little so the chin is well inside (the model was trained on detector boxes).
CROP_SCALE = 1.15
CROP_SHIFT_DOWN = 0.06
# onnxruntime providers, fastest first; only those this installation has are used.
PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxGenerator(Generator):
    """A generator backed by an installed ONNX model honouring the wav2lip96 contract."""

    needs_weights = True

    def __init__(
        self,
        name: str,
        status: ModelStatus,
        contract: ModelContract,
        intensity: int = 2,
        batch_size: int = 16,
        sharpen: float = 0.5,
        precision: str = "auto",
    ) -> None:
        super().__init__(intensity)
        self.name = name
        self.contract = contract
        self.batch_size = batch_size
        self.sharpen = sharpen  # unsharp-mask amount for the upscaled crop; 0 turns it off
        self._session, self.precision = _open_session(status, contract, precision)
        self._mel = np.zeros((0, 1, contract.mel_bands, contract.mel_steps), np.float32)

    def describe(self) -> str:
        provider = self._session.get_providers()[0].removesuffix("ExecutionProvider")
        return f"{self.name} on {provider}, {self.precision}"

    def prepare(self, audio: AudioFeatures, source: SourceVideo | None = None) -> None:
        self._mel = np.asarray(audio.mel, dtype=np.float32)[:, None]

    def footprint(self, landmarks: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = crop_box(landmarks)
        h, w = shape[:2]
        return max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)

    def render(self, faces: list[FaceFrame]) -> list[tuple[int, int, int, int]]:
        boxes = []
        for start in range(0, len(faces), self.batch_size):
            part = faces[start : start + self.batch_size]
            crops = [self._crop(face) for face in part]
            generated = self.generate(
                np.stack([c for c, _ in crops]),
                np.stack([self._mel_at(face.out_index) for face in part]),
            )
            for face, (_, box), new in zip(part, crops, generated, strict=True):
                boxes.append(self._paste(face, box, new))
        return boxes

    def generate(self, crops_rgb: np.ndarray, mel: np.ndarray) -> np.ndarray:
        """Run the model: (n, s, s, 3) uint8 RGB crops and (n, 1, 80, 16) mel -> RGB crops."""
        c = self.contract
        crops = crops_rgb[..., ::-1] if c.colour_order.upper() == "BGR" else crops_rgb
        reference = crops.astype(np.float32) / 255.0
        masked = reference.copy()
        masked[:, c.crop_size // 2 :] = 0.0  # the model must not see the mouth it redraws
        video = np.concatenate([masked, reference], axis=3).transpose(0, 3, 1, 2)

        feeds = {c.mel_input: np.ascontiguousarray(mel), c.video_input: np.ascontiguousarray(video)}
        try:
            (out,) = run_session(self._session, [c.output], feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InternalError(f"model {self.name!r} failed: {exc}") from exc

        out = np.clip(out.transpose(0, 2, 3, 1) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return out[..., ::-1] if c.colour_order.upper() == "BGR" else out

    def _mel_at(self, out_index: int) -> np.ndarray:
        if not 0 <= out_index < len(self._mel):
            return np.full(self._mel.shape[1:], self.contract.mel_range[0], np.float32)
        return self._mel[out_index]

    def _crop(self, face: FaceFrame):
        """The model's square crop of the face, scaled to its size, and where it came from."""
        x0, y0, x1, y1 = crop_box(face.landmarks)
        size = self.contract.crop_size
        # Crop through an affine map so a box reaching past the frame edge still works.
        scale = size / (x1 - x0)
        matrix = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
        crop = cv2.warpAffine(
            face.image, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
        )
        return crop, (x0, y0, x1, y1)

    def _paste(self, face: FaceFrame, box, generated: np.ndarray) -> tuple[int, int, int, int]:
        """Blend the generated crop back through the feathered lower-face mask."""
        image = face.image
        (mx0, my0, mx1, my1), alpha = lower_face_alpha(face.landmarks, image.shape)
        if alpha.size == 0:
            return (0, 0, 0, 0)

        # The generated crop, mapped back onto the mask's box of the frame.
        x0, y0, x1, y1 = box
        scale = (x1 - x0) / self.contract.crop_size
        matrix = np.array([[scale, 0.0, x0 - mx0], [0.0, scale, y0 - my0]])
        placed = cv2.warpAffine(
            generated,
            matrix,
            (mx1 - mx0, my1 - my0),
            flags=cv2.INTER_CUBIC,
            borderMode=cv2.BORDER_REPLICATE,
        )

        if self.sharpen > 0:
            # A 96 px crop scaled up is soft: an unsharp mask brings back some edge.
            sigma = max(0.8, scale * 0.6)
            soft = cv2.GaussianBlur(placed, (0, 0), sigma)
            placed = cv2.addWeighted(placed, 1.0 + self.sharpen, soft, -self.sharpen, 0)

        # Match the colour: shift the generated pixels to the frame's mean under the mask.
        roi = image[my0:my1, mx0:mx1]
        weight = alpha[..., None]
        total = max(float(alpha.sum()), 1.0)
        shift = ((roi.astype(np.float32) - placed) * weight).sum(axis=(0, 1)) / total
        placed = np.clip(placed.astype(np.float32) + shift, 0, 255).astype(np.uint8)
        blend_masked(roi, placed, alpha)
        return mx0, my0, mx1, my1


def crop_box(landmarks: np.ndarray) -> tuple[int, int, int, int]:
    """The square crop (x0, y0, x1, y1) the model sees: the face, chin well inside."""
    points = np.asarray(landmarks, dtype=np.float64)
    (left, top), (right, bottom) = points.min(axis=0), points.max(axis=0)
    side = max(right - left, bottom - top) * CROP_SCALE
    cx = (left + right) / 2.0
    cy = (top + bottom) / 2.0 + CROP_SHIFT_DOWN * side
    half = max(int(round(side / 2.0)), 8)
    x0, y0 = int(round(cx)) - half, int(round(cy)) - half
    return x0, y0, x0 + 2 * half, y0 + 2 * half


def _open_session(status: ModelStatus, contract: ModelContract, precision: str = "auto"):
    """An onnxruntime session on the best providers here, and the precision it runs in.

    TensorRT builds fp16 engines itself (cached under the cache folder); the CUDA provider
    gets a float16 copy of the model; the CPU keeps float32 unless ``fp16`` is asked for.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError(
            "ONNX models need onnxruntime", hint="pip install onnxruntime (or onnxruntime-gpu)"
        ) from exc

    available = [name for name in PROVIDERS if name in set(ort.get_available_providers())]
    first = available[0] if available else "CPUExecutionProvider"
    providers: list = []
    for name in available:
        if name == "TensorrtExecutionProvider":
            engines = cache_dir() / "tensorrt"
            engines.mkdir(parents=True, exist_ok=True)
            options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(engines)}
            options["trt_fp16_enable"] = precision != "fp32"
            providers.append((name, options))
        else:
            providers.append(name)

    path, used = status.path, "fp32"
    if first == "TensorrtExecutionProvider":
        used = "fp32" if precision == "fp32" else "fp16"  # TensorRT's choice of kernels
    elif precision == "fp16" or (precision == "auto" and first == "CUDAExecutionProvider"):
        half = _half_model(status, contract, first)
        if half is not None:
            path, used = half, "fp16"

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are not the user's concern
    threads = os.cpu_count() or 1
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=providers)
    logger.info("model %s on %s in %s", status.name, ", ".join(session.get_providers()), used)
    return session, used


def _half_model(status: ModelStatus, contract: ModelContract, provider: str):
    """The checked float16 copy of the model for ``provider``, or None to keep float32."""
    from ..half import HalfConversionError, half_copy

    try:
        # Keyed by the file's own bytes: a re-imported model gets a fresh copy.
        made = half_copy(status.path, file_digest(status.path), contract, provider)
    except HalfConversionError as exc:
        logger.info("model %s stays float32: %s", status.name, exc)
        return None
    return made.path if made.usable else None
