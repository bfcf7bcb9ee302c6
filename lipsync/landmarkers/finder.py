"""Faces on many independent runs of frames at once, as lipsync's MediaPipe finder finds them.

:class:`LaneFinder` follows the rules of ``faces._FaceFinder`` (the CPU path) on the ONNX
models, for several *lanes* at a time: a lane is one run of consecutive frames with its own
tracking state, and one call advances every lane by a frame. Each stage gathers the work of
all lanes into one batch per model: the mesh tracker's detections and meshes, the meshes of
the small faces followed on enlarged crops, and the full-range search for new faces. The
tracker is MediaPipe's ``FaceLandmarkFrontCpu`` in tracking mode: a lane re-runs the
short-range detector only while it follows fewer faces than it may, and each face's next
region comes from its landmarks.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from ..faces import (
    _CROP_SCALE,
    _FOLLOW_SCALE,
    DISCOVER_EVERY,
    MAX_FACES,
    _box_of,
    _covered,
    _crop_padded,
)
from . import graph
from .face_models import FaceModels


@dataclass
class _Lane:
    """The tracking state of one run of frames."""

    regions: list[graph.Region] = field(default_factory=list)  # from last frame's landmarks
    followed: list[np.ndarray] = field(default_factory=list)  # (468, 2) px small faces
    count: int = 0  # frames seen


@dataclass
class _Crop:
    """A square crop of a lane's frame to mesh on its own, as MediaPipe's static mode does."""

    lane: Hashable  # whose frame it is cut from
    x0: int  # crop origin on the frame, px
    y0: int
    side: int  # crop side, px
    image: np.ndarray  # (side, side, 3) uint8 RGB, black outside the frame


class LaneFinder:
    """Every face on each lane's next frame; lanes start, advance and end independently."""

    def __init__(self, models: FaceModels, tracked: int = MAX_FACES) -> None:
        self.models = models
        self.tracked = tracked  # faces the mesh tracker follows per lane
        self._lanes: dict[Hashable, _Lane] = {}

    def start(self, lane: Hashable) -> None:
        """Begin a new run on ``lane``: nothing is tracked yet."""
        self._lanes[lane] = _Lane()

    def end(self, lane: Hashable) -> None:
        self._lanes.pop(lane, None)

    def find(self, images: dict[Hashable, np.ndarray]) -> dict[Hashable, list[np.ndarray]]:
        """(468, 2) landmarks normalised to each image, per lane, for the lanes' next frames."""
        faces = self._track(images)
        followed = self._follow(images, faces)
        self._discover(images, faces, followed)

        result = {}
        for lane, image in images.items():
            height, width = image.shape[:2]
            state = self._lanes[lane]
            state.followed = followed[lane]
            state.count += 1
            everyone = (faces[lane] + followed[lane])[:MAX_FACES]
            result[lane] = [face / (width, height) for face in everyone]
        return result

    def _track(self, images: dict[Hashable, np.ndarray]) -> dict[Hashable, list[np.ndarray]]:
        """The mesh tracker's faces (px) on every lane, and each lane's regions for next time."""
        searching = [lane for lane in images if len(self._lanes[lane].regions) < self.tracked]
        found = self.models.detect([images[lane] for lane in searching], graph.SHORT_RANGE)
        detected = dict(zip(searching, found, strict=True))

        jobs: list[tuple[Hashable, graph.Region]] = []
        for lane, image in images.items():
            height, width = image.shape[:2]
            fresh = [
                graph.region_from_detection(face, width, height)
                for face in detected.get(lane, [])[: self.tracked]
            ]
            jobs += [(lane, region) for region in graph.associate(fresh, self._lanes[lane].regions)]

        meshes = self.models.mesh([(images[lane], region) for lane, region in jobs])
        faces: dict[Hashable, list[np.ndarray]] = {lane: [] for lane in images}
        regions: dict[Hashable, list[graph.Region]] = {lane: [] for lane in images}
        for (lane, _), mesh in zip(jobs, meshes, strict=True):
            if mesh.landmarks is None:
                continue
            height, width = images[lane].shape[:2]
            faces[lane].append(mesh.landmarks * (width, height))
            regions[lane].append(graph.region_from_landmarks(mesh.landmarks, width, height))
        for lane in images:
            self._lanes[lane].regions = regions[lane]
        return faces

    def _follow(self, images, faces) -> dict[Hashable, list[np.ndarray]]:
        """The small faces of the last frame, meshed again on crops around where they were."""
        crops = [
            _cut(lane, images[lane], _box_of(last), _FOLLOW_SCALE)
            for lane in images
            for last in self._lanes[lane].followed
        ]
        meshed = self._mesh_crops(crops)

        followed: dict[Hashable, list[np.ndarray]] = {lane: [] for lane in images}
        for crop, face in zip(crops, meshed, strict=True):
            kept = faces[crop.lane] + followed[crop.lane]
            if face is not None and not _covered(_box_of(face), kept):
                followed[crop.lane].append(face)
        return followed

    def _discover(self, images, faces, followed) -> None:
        """Look for new small faces with the full-range detector, now and then (in place)."""
        looking = [
            lane
            for lane in images
            if self._lanes[lane].count % DISCOVER_EVERY == 0 or not (faces[lane] or followed[lane])
        ]
        found = self.models.detect([images[lane] for lane in looking], graph.FULL_RANGE)

        # Every box not yet covered is meshed in one batch; the rules are then applied box
        # by box as the CPU path does, and a box they skip just goes unused.
        candidates: list[tuple[Hashable, np.ndarray, _Crop | None]] = []
        for lane, detections in zip(looking, found, strict=True):
            height, width = images[lane].shape[:2]
            before = faces[lane] + followed[lane]
            for detection in detections:
                box = detection.box_px(width, height)
                useful = len(before) < MAX_FACES and not _covered(box, before)
                crop = _cut(lane, images[lane], box, _CROP_SCALE) if useful else None
                candidates.append((lane, box, crop))
        crops = [crop for _, _, crop in candidates if crop is not None]
        meshed = iter(self._mesh_crops(crops))

        for lane, box, crop in candidates:
            face = next(meshed) if crop is not None else None
            kept = faces[lane] + followed[lane]
            if len(kept) >= MAX_FACES or _covered(box, kept):
                continue
            if face is not None and not _covered(_box_of(face), kept):
                followed[lane].append(face)

    def _mesh_crops(self, crops: list[_Crop]) -> list[np.ndarray | None]:
        """(468, 2) px landmarks of the best face on each crop: detect, then mesh (batched)."""
        detections = self.models.detect([crop.image for crop in crops], graph.SHORT_RANGE)
        jobs = [
            (i, graph.region_from_detection(found[0], crop.side, crop.side))
            for i, (crop, found) in enumerate(zip(crops, detections, strict=True))
            if found
        ]
        meshes = self.models.mesh([(crops[i].image, region) for i, region in jobs])

        result: list[np.ndarray | None] = [None] * len(crops)
        for (i, _), mesh in zip(jobs, meshes, strict=True):
            if mesh.landmarks is not None:
                crop = crops[i]
                result[i] = mesh.landmarks * crop.side + (crop.x0, crop.y0)
        return result


def _cut(lane: Hashable, image: np.ndarray, box: np.ndarray, scale: float) -> _Crop:
    """The square crop ``scale`` times the box's longer side, centred on it (as the CPU path)."""
    side = max(16, round(scale * max(box[2] - box[0], box[3] - box[1])))
    x0 = round((box[0] + box[2]) / 2 - side / 2)
    y0 = round((box[1] + box[3]) / 2 - side / 2)
    return _Crop(lane, x0, y0, side, _crop_padded(image, x0, y0, side))
