"""The arithmetic around MediaPipe's face models, as the legacy face-mesh graph does it.

The ONNX landmarker must give the landmarks MediaPipe's own ``FaceMesh`` gives, so every step
between the models follows the graph shipped in mediapipe 0.10.21 (read from the wheel's
compiled subgraphs): SSD anchors and box decoding for BlazeFace, weighted non-maximum
suppression, the letterboxed detector input, the rotated square region of interest from a
detection's eye keypoints or from the previous frame's landmarks, the 192 px crop by
perspective warp of the region's corners, and the projection of the mesh back onto the
image. Coordinates are normalised to the image (x / width, y / height) unless a name says px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DetectorSpec:
    """One BlazeFace detector's decoding options (FaceDetectionShortRange / FullRange)."""

    size: int  # square input tensor side, px
    strides: tuple[int, ...]  # feature-map stride of each SSD layer
    interpolated_aspect: float  # > 0 adds one anchor per cell at an in-between scale
    score_threshold: float  # least sigmoid score kept (the FaceMesh / FaceDetection default)


SHORT_RANGE = DetectorSpec(size=128, strides=(8, 16, 16, 16), interpolated_aspect=1.0,
                           score_threshold=0.5)  # fmt: skip
# The full-range graph's own threshold is 0.6, and the Python FaceDetection's
# min_detection_confidence does not reach it in mediapipe 0.10.21 (measured: a face at 0.609
# is kept and one at 0.582 dropped whatever confidence is asked for).
FULL_RANGE = DetectorSpec(size=192, strides=(4,), interpolated_aspect=0.0, score_threshold=0.6)

N_KEYPOINTS = 6  # detector keypoints: eyes, nose tip, mouth, ear tragions
NMS_IOU = 0.3  # weighted suppression merges boxes overlapping more than this
SCORE_CLIP = 100.0  # raw scores are clipped to +-this before the sigmoid
ROI_SCALE = 1.5  # the face region is this much larger than the detection / landmark box
MESH_SIZE = 192  # face-mesh input side, px
PRESENCE_THRESHOLD = 0.5  # face-presence score a mesh must beat to count as a face
ASSOCIATION_IOU = 0.5  # a tracked region replaces a detected one overlapping more than this
# Keypoints / landmarks whose line gives the region's rotation: the eyes.
DETECTION_EYES = (0, 1)
MESH_EYES = (33, 263)


@dataclass(frozen=True)
class Detection:
    """A face the detector found."""

    score: float  # sigmoid score
    box: np.ndarray  # (4,) xmin, ymin, xmax, ymax
    keypoints: np.ndarray  # (6, 2) x, y

    def box_px(self, width: int, height: int) -> np.ndarray:
        """(4,) x0, y0, x1, y1 in pixels."""
        return self.box * (width, height, width, height)


@dataclass(frozen=True)
class Region:
    """A rotated rectangle on the image, in normalised units (MediaPipe's NormalizedRect)."""

    x: float  # centre x
    y: float  # centre y
    width: float  # width / image width
    height: float  # height / image height
    rotation: float  # radians, clockwise on the image


def anchors(spec: DetectorSpec) -> np.ndarray:
    """(n, 2) anchor centres of a detector, in its layer order (SsdAnchorsCalculator)."""
    centres = []
    layer = 0
    while layer < len(spec.strides):
        # Layers sharing a stride share one feature map: their anchors interleave per cell.
        per_cell = 0
        last = layer
        while last < len(spec.strides) and spec.strides[last] == spec.strides[layer]:
            per_cell += 2 if spec.interpolated_aspect > 0 else 1
            last += 1
        side = math.ceil(spec.size / spec.strides[layer])
        grid = (np.arange(side) + 0.5) / side
        ys, xs = np.meshgrid(grid, grid, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(cells, per_cell, axis=0))
        layer = last
    return np.concatenate(centres)


def detector_input(image: np.ndarray, spec: DetectorSpec) -> tuple[np.ndarray, Region]:
    """The detector's (size, size, 3) float32 input in [-1, 1], letterboxed, and its region.

    The whole image is padded to a square with black (keep_aspect_ratio, BORDER_ZERO).
    """
    height, width = image.shape[:2]
    side = float(max(width, height))
    region = Region(0.5, 0.5, side / width, side / height, 0.0)
    pixels = warp_region(image, region, spec.size, cv2.BORDER_CONSTANT)
    return pixels.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0), region


def decode_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    centres: np.ndarray,
    spec: DetectorSpec,
    region: Region,
) -> list[Detection]:
    """Raw detector outputs -> faces on the image, best first (decode, suppress, project).

    Args:
        boxes: (n, 16) raw regressors: x, y, w, h, then six keypoint x, y, all in tensor px
            relative to their anchor.
        scores: (n,) or (n, 1) raw logits.
        centres: (n, 2) anchor centres from :func:`anchors`.
        spec: the detector.
        region: the letterboxed region :func:`detector_input` fed it.
    """
    raw = np.clip(np.asarray(scores, np.float64).reshape(-1), -SCORE_CLIP, SCORE_CLIP)
    score = 1.0 / (1.0 + np.exp(-raw))
    keep = np.flatnonzero(score >= spec.score_threshold)
    if keep.size == 0:
        return []

    values = np.asarray(boxes, np.float64)[keep] / spec.size
    anchor = centres[keep]
    centre = values[:, :2] + anchor
    half = values[:, 2:4] / 2.0
    box = np.concatenate([centre - half, centre + half], axis=1)
    points = values[:, 4 : 4 + 2 * N_KEYPOINTS].reshape(-1, N_KEYPOINTS, 2) + anchor[:, None]
    valid = (box[:, 2] >= box[:, 0]) & (box[:, 3] >= box[:, 1])

    found = weighted_nms(score[keep][valid], box[valid], points[valid])
    return [_project(face, region) for face in found]


def weighted_nms(scores: np.ndarray, boxes: np.ndarray, points: np.ndarray) -> list[Detection]:
    """MediaPipe's WEIGHTED suppression: each kept face averages the boxes it absorbs.

    Faces are taken by falling score; every remaining box overlapping the best one by more
    than NMS_IOU (itself included) is merged into it, weighted by score; the merged face
    keeps the best one's score.
    """
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    result: list[Detection] = []
    while order:
        best = order[0]
        overlaps = _iou(boxes[best], boxes[order])
        members = [i for i, o in zip(order, overlaps, strict=True) if o > NMS_IOU]
        rest = [i for i, o in zip(order, overlaps, strict=True) if not o > NMS_IOU]
        if members:
            weights = scores[members][:, None]
            total = weights.sum()
            box = (boxes[members] * weights).sum(axis=0) / total
            keypoints = (points[members] * weights[:, :, None]).sum(axis=0) / total
        else:  # a box whose overlap with itself is not a number (zero area)
            box, keypoints = boxes[best], points[best]
        result.append(Detection(float(scores[best]), box, keypoints))
        if len(rest) == len(order):
            break
        order = rest
    return result


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one (4,) box with (n, 4) boxes; 0 where the union is 0."""
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _project(face: Detection, region: Region) -> Detection:
    """A detection in the letterboxed tensor's coordinates -> the image's."""

    def to_image(xy: np.ndarray) -> np.ndarray:
        return (xy - 0.5) * (region.width, region.height) + (region.x, region.y)

    box = np.concatenate([to_image(face.box[:2]), to_image(face.box[2:])])
    return Detection(face.score, box, to_image(face.keypoints))


def region_from_detection(face: Detection, width: int, height: int) -> Region:
    """The mesh's region for a detected face (FaceDetectionFrontDetectionToRoi)."""
    (x0, y0, x1, y1) = face.box
    rotation = _rotation(face.keypoints[DETECTION_EYES[0]], face.keypoints[DETECTION_EYES[1]],
                         width, height)  # fmt: skip
    return _square(Region((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, rotation), width, height)


def region_from_landmarks(landmarks: np.ndarray, width: int, height: int) -> Region:
    """The next frame's region from this frame's (468, 2) landmarks (LandmarksToRoi)."""
    (x0, y0), (x1, y1) = landmarks.min(axis=0), landmarks.max(axis=0)
    rotation = _rotation(landmarks[MESH_EYES[0]], landmarks[MESH_EYES[1]], width, height)
    return _square(Region((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, rotation), width, height)


def _rotation(start: np.ndarray, end: np.ndarray, width: int, height: int) -> float:
    """The angle that levels the line start -> end, measured in pixels, in [-pi, pi)."""
    angle = -math.atan2(-(end[1] - start[1]) * height, (end[0] - start[0]) * width)
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def _square(region: Region, width: int, height: int) -> Region:
    """Square on the longer side in pixels, then enlarged by ROI_SCALE (RectTransformation)."""
    side = max(region.width * width, region.height * height)
    return Region(region.x, region.y, side / width * ROI_SCALE, side / height * ROI_SCALE,
                  region.rotation)  # fmt: skip


def associate(detected: list[Region], tracked: list[Region]) -> list[Region]:
    """Merge detected and tracked regions; a later one replaces earlier ones it overlaps.

    AssociationNormRectCalculator: the overlap is the IoU of the unrotated rectangles, and
    tracked regions come after detected ones, so a face followed from the last frame keeps
    its tracked region.
    """
    result: list[Region] = []
    for region in [*detected, *tracked]:
        result = [r for r in result if not _region_iou(r, region) > ASSOCIATION_IOU]
        result.append(region)
    return result


def _region_iou(a: Region, b: Region) -> float:
    box_a = np.array([a.x - a.width / 2, a.y - a.height / 2, a.x + a.width / 2, a.y + a.height / 2])
    box_b = np.array([[b.x - b.width / 2, b.y - b.height / 2, b.x + b.width / 2,
                       b.y + b.height / 2]])  # fmt: skip
    return float(_iou(box_a, box_b)[0])


def warp_region(image: np.ndarray, region: Region, size: int, border: int) -> np.ndarray:
    """The (size, size, 3) uint8 pixels of a rotated region, corners mapped onto corners.

    As ImageToTensorCalculator's OpenCV path: the rectangle's four corners (cv2.boxPoints)
    go to the output's corners through a perspective transform, bilinear, on the uint8
    image; the caller scales the values.
    """
    height, width = image.shape[:2]
    centre = (float(region.x * width), float(region.y * height))
    extent = (float(region.width * width), float(region.height * height))
    corners = cv2.boxPoints((centre, extent, float(np.float32(region.rotation) * 180 / math.pi)))
    target = np.array([[0, size], [0, 0], [size, 0], [size, size]], np.float32)
    matrix = cv2.getPerspectiveTransform(corners.astype(np.float32), target)
    return cv2.warpPerspective(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=border
    )


def mesh_input(image: np.ndarray, region: Region) -> np.ndarray:
    """The face mesh's (192, 192, 3) float32 input in [0, 1] (edge pixels replicated)."""
    pixels = warp_region(image, region, MESH_SIZE, cv2.BORDER_REPLICATE)
    return pixels.astype(np.float32) * np.float32(1.0 / 255.0)


def project_mesh(raw: np.ndarray, region: Region) -> np.ndarray:
    """(1404,) mesh output in crop px -> (468, 2) landmarks on the image (LandmarkProjection)."""
    points = np.asarray(raw, np.float64).reshape(-1, 3)[:, :2] / MESH_SIZE - 0.5
    cos, sin = math.cos(region.rotation), math.sin(region.rotation)
    x = cos * points[:, 0] - sin * points[:, 1]
    y = sin * points[:, 0] + cos * points[:, 1]
    return np.stack([x * region.width + region.x, y * region.height + region.y], axis=1)


def presence(logit: float) -> bool:
    """Whether the mesh's face-presence output says a face is there."""
    return 1.0 / (1.0 + math.exp(-float(logit))) > PRESENCE_THRESHOLD
