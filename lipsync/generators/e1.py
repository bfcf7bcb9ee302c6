"""``e1``: the built-in mouth renderer. It needs no learned weights.

How far the mouth opens comes from the new audio (``AudioFeatures.openness``, zero in
silence). The renderer moves the face-mesh lip and jaw landmarks to that opening, turns the
moves into a smooth displacement field over the lower face, warps the frame with it, paints
the opened inside of the mouth (a dark cavity with a band of upper teeth), and blends the
result back through a feathered lower-face mask. Pixels outside the mask are never written.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..audio import AudioFeatures
from ..faces import steady_lower_face
from ..kernels import blend_masked, displacement_field, seam_split_maps
from ..landmarks import (
    CHIN,
    CHIN_MIDLINE,
    JAW,
    LIP_POINTS,
    LIPS_LOWER_INNER,
    LIPS_LOWER_OUTER,
    LIPS_UPPER_INNER,
    LIPS_UPPER_OUTER,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    STILL,
    MouthFrame,
    lower_face_polygon,
    mouth_frame,
)
from ..mouths import CANON_WIDTH, CENTER, MouthAtlas, MouthSample, lip_colour
from . import register
from .base import FaceFrame, Generator, SourceVideo

# Centre opening at full loudness, in mouth widths, for intensity 1, 2 and 3.
OPEN_GAIN = {1: 0.2, 2: 0.32, 3: 0.45}
# How an opening is shared: the jaw carries the lower lip down, the upper lip lifts a little.
LOWER_SHARE, UPPER_SHARE = 0.8, 0.2
# Fraction of the lower-lip move that reaches each chin-midline point, lip to chin.
CHIN_FOLLOW = (0.95, 0.92, 0.9, 0.88, 0.85)
# How far full rounding draws each lip point towards the mouth's centre (a share of its
# distance from it): the mouth narrows by this share of its width.
ROUND_PULL = 0.25
# Feather of the lower-face mask, in mouth widths (Gaussian sigma).
FEATHER = 0.07
# The displacement field is evaluated on a grid this many pixels apart, then interpolated.
GRID_STEP = 4
# A mouth sample in use is kept until another fits the opening this much better (mouth
# widths): two near-equal samples swapped frame after frame make the inside flicker.
SAMPLE_STICK = 0.03
TEETH_RGB = np.array([226.0, 220.0, 208.0], dtype=np.float32)
# Which side of the lip seam a control point steers (a bit mask: anchors steer both).
_UPPER, _LOWER = 1, 2


@dataclass
class _Controls:
    """The warp's control points, where they end up, and the new mouth outline."""

    targets: np.ndarray  # (m, 2) px, where each control point moves to
    moves: np.ndarray  # (m, 2) px, target minus source
    sigmas: np.ndarray  # (m,) px, how far each point's pull reaches
    sides: np.ndarray  # (m,) int, _UPPER, _LOWER or both
    seam: np.ndarray  # (k, 2) (u, v) px of the new lip seam, sorted by u
    inner: np.ndarray  # (2k, 2) px, the new inner-lip loop (upper left to right, lower back)


@register("e1")
class E1Generator(Generator):
    """Landmark-driven warp plus a painted mouth interior; deterministic, CPU only."""

    def __init__(self, intensity: int = 2) -> None:
        super().__init__(intensity)
        self._openness = np.zeros(0, dtype=np.float32)
        self._rounding = np.zeros(0, dtype=np.float32)
        self._lip_rgb: dict[int, np.ndarray] = {}
        self._atlases: dict[int, MouthAtlas] = {}
        self._samples: dict[int, MouthSample] = {}  # track -> the mouth sample in use
        # track -> (its source frames, (n, len(LIP_POINTS), 2) px from each frame's lips to
        # the steady lower face's): where the lips are held while the new voice moves them.
        self._holds: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def prepare(self, audio: AudioFeatures, source: SourceVideo | None = None) -> None:
        self._openness = np.asarray(audio.openness, dtype=np.float32)
        rounding = audio.rounding if audio.rounding is not None else np.zeros_like(self._openness)
        self._rounding = np.asarray(rounding, dtype=np.float32)
        mouths = {} if source is None else source.faces.mouths
        self._atlases = {track: MouthAtlas(samples) for track, samples in mouths.items()}
        self._samples = {}
        self._holds = {}
        if source is not None:
            fps = float(source.info.fps)
            for t, track in enumerate(source.faces.tracks):
                lips = list(LIP_POINTS)
                steady = steady_lower_face(track, fps, points=lips)
                self._holds[t] = (track.frames, steady - track.landmarks[:, lips])

    def footprint(self, landmarks: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        landmarks = np.asarray(landmarks, dtype=np.float64)
        box = _mask_box(landmarks, mouth_frame(landmarks), shape)
        return box if box is not None else (0, 0, 0, 0)

    def render(self, faces: list[FaceFrame]) -> list[tuple[int, int, int, int]]:
        return [self._render_one(face) for face in faces]

    def target_opening(self, out_index: int, width: float) -> float:
        """Centre inner-lip gap the audio asks for at this output frame, in px."""
        if not 0 <= out_index < len(self._openness):
            return 0.0
        return float(self._openness[out_index]) * OPEN_GAIN[self.intensity] * width

    def _render_one(self, face: FaceFrame) -> tuple[int, int, int, int]:
        image, landmarks = face.image, face.landmarks.astype(np.float64)
        frame = mouth_frame(landmarks)
        box = _mask_box(landmarks, frame, image.shape)
        if box is None:
            return (0, 0, 0, 0)
        x0, y0, x1, y1 = box

        opening = self.target_opening(face.out_index, frame.width)
        rounding = self._rounding[face.out_index] if face.out_index < len(self._rounding) else 0
        controls = _control_moves(
            landmarks, frame, opening, float(rounding), shape=self._steady_shape(face, landmarks)
        )
        warped = _warp_roi(image, box, controls, frame)

        lip_rgb = self._track_lip_colour(face.track, image, landmarks)
        sample = self._mouth_sample(face.track, opening / frame.width)
        if sample is not None:
            _paste_mouth_inside(warped, box, controls.inner, frame, sample, lip_rgb)
        else:
            _paint_mouth_inside(warped, box, controls.inner, frame, lip_rgb)

        alpha = _mask_alpha(landmarks, frame, box)
        roi = image[y0:y1, x0:x1]
        blend_masked(roi, warped, alpha)
        return box

    def _mouth_sample(self, track: int, opening: float) -> MouthSample | None:
        """The speaker's own mouth sample for an opening (mouth widths), kept while it fits."""
        atlas = self._atlases.get(track)
        best = atlas.nearest(opening) if atlas is not None else None
        if best is None:
            return None
        held = self._samples.get(track)
        if (
            held is not None
            and abs(held.opening - opening) <= abs(best.opening - opening) + SAMPLE_STICK
        ):
            return held
        self._samples[track] = best
        return best

    def _steady_shape(self, face: FaceFrame, landmarks: np.ndarray) -> np.ndarray | None:
        """The face's landmarks with its lips where the steady lower face has them; None for
        a face that is not on a frame of the prepared source."""
        hold = self._holds.get(face.track)
        if hold is None:
            return None
        frames, moves = hold
        row = int(np.searchsorted(frames, face.source_index))
        if row >= len(frames) or frames[row] != face.source_index:
            return None
        shape = landmarks.copy()
        shape[list(LIP_POINTS)] += moves[row]
        return shape

    def _track_lip_colour(self, track: int, image: np.ndarray, landmarks: np.ndarray):
        """Lip colour of this face, averaged over time so the mouth inside does not flicker."""
        sample = lip_colour(image, landmarks)

        previous = self._lip_rgb.get(track)
        colour = sample if previous is None else 0.9 * previous + 0.1 * sample
        self._lip_rgb[track] = colour
        return colour


def _mask_box(landmarks, frame: MouthFrame, shape) -> tuple[int, int, int, int] | None:
    """Pixel box of the lower-face mask plus its feather, clipped to the image."""
    polygon = lower_face_polygon(landmarks)
    pad = 3.0 * FEATHER * frame.width + 2
    h, w = shape[:2]
    x0 = int(max(np.floor(polygon[:, 0].min() - pad), 0))
    y0 = int(max(np.floor(polygon[:, 1].min() - pad), 0))
    x1 = int(min(np.ceil(polygon[:, 0].max() + pad), w))
    y1 = int(min(np.ceil(polygon[:, 1].max() + pad), h))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    return x0, y0, x1, y1


def _control_moves(
    landmarks,
    frame: MouthFrame,
    opening: float,
    rounding: float = 0.0,
    shape: np.ndarray | None = None,
) -> _Controls:
    """Control points, their moves (px), reaches and sides, plus the new inner-lip loop.

    The new lips are built on ``shape`` (the face's landmarks with its lips held steady;
    default: ``landmarks`` as they are): each inner-lip pair (upper and lower point at the
    same place across the mouth) is moved apart or together until its gap matches a
    lens-shaped profile whose centre is ``opening``; the outer lip follows its inner edge
    and the chin follows the lower lip. The moves then take each point from where it is in
    ``landmarks`` (the pixels of this frame) to where the new lips have it.
    """
    held = shape is not None
    shape = landmarks if shape is None else shape
    lips_frame = mouth_frame(shape) if held else frame
    width, v = lips_frame.width, lips_frame.v
    upper_in = shape[list(LIPS_UPPER_INNER)]
    lower_in = shape[list(LIPS_LOWER_INNER)]
    local_up = lips_frame.to_local(upper_in)
    local_lo = lips_frame.to_local(lower_in)

    across = np.clip(local_up[:, 0] / (0.5 * width), -1.0, 1.0)
    profile = np.sqrt(1.0 - across**2)
    gap = np.maximum(local_lo[:, 1] - local_up[:, 1], 0.0)
    change = opening * profile - gap
    change[[0, -1]] = 0.0  # the inner corners stay where they are

    down = change[:, None] * v[None, :]
    moves_lo, moves_up = LOWER_SHARE * down, -UPPER_SHARE * down

    # Rounding (o, u, w) draws the lips towards the middle: every lip point, corners
    # included, moves inwards in proportion to its distance from the centre.
    def pull(points: np.ndarray) -> np.ndarray:
        across_px = lips_frame.to_local(points)[:, 0]
        return -ROUND_PULL * rounding * across_px[:, None] * lips_frame.u[None, :]

    def hold(indices) -> np.ndarray:
        """From where the points are on this frame to where the steady shape has them."""
        return shape[list(indices)] - landmarks[list(indices)]

    moves_up = moves_up + pull(upper_in) + hold(LIPS_UPPER_INNER)
    moves_lo = moves_lo + pull(lower_in) + hold(LIPS_LOWER_INNER)
    upper_out = shape[list(LIPS_UPPER_OUTER[1:-1])]
    lower_out = shape[list(LIPS_LOWER_OUTER[1:-1])]
    # The outer lip follows its inner edge's opening (not its hold: each point has its own).
    open_up = moves_up[1:-1] - pull(upper_in[1:-1]) - hold(LIPS_UPPER_INNER[1:-1])
    open_lo = moves_lo[1:-1] - pull(lower_in[1:-1]) - hold(LIPS_LOWER_INNER[1:-1])
    moves_up_out = 0.9 * open_up + pull(upper_out) + hold(LIPS_UPPER_OUTER[1:-1])
    moves_lo_out = 0.95 * open_lo + pull(lower_out) + hold(LIPS_LOWER_OUTER[1:-1])

    up, lo, both = _UPPER, _LOWER, _UPPER | _LOWER
    groups = [
        (landmarks[list(LIPS_UPPER_INNER[1:-1])], moves_up[1:-1], 0.06, up),
        (landmarks[list(LIPS_LOWER_INNER[1:-1])], moves_lo[1:-1], 0.06, lo),
        (landmarks[list(LIPS_UPPER_OUTER[1:-1])], moves_up_out, 0.08, up),
        (landmarks[list(LIPS_LOWER_OUTER[1:-1])], moves_lo_out, 0.08, lo),
    ]
    # The jaw carries the lower lip: the chin follows the middle of the lower lip down (or
    # up), the angles of the jaw hardly move.
    drop = float(moves_lo[len(moves_lo) // 2] @ v)
    chin = landmarks[list(CHIN_MIDLINE)]
    groups.append((chin, drop * np.asarray(CHIN_FOLLOW)[:, None] * v[None, :], 0.18, lo))
    jaw = landmarks[[i for i in JAW if i != CHIN]]
    reach = np.abs(frame.to_local(jaw)[:, 0]) / (0.5 * frame.width)
    jaw_follow = np.clip(1.0 - (reach - 0.6) / 1.4, 0.0, 1.0) * 0.85
    groups.append((jaw, drop * jaw_follow[:, None] * v[None, :], 0.2, lo))

    # Anchors that hold the rest of the face still: the corners (which only round and
    # hold), the nose base, the cheeks, and a ring below the chin so the neck stretches as
    # little as it can.
    corners = [MOUTH_LEFT, MOUTH_RIGHT]
    groups.append((landmarks[corners], pull(shape[corners]) + hold(corners), 0.1, both))
    still = landmarks[list(STILL)]
    offsets = np.array([[-0.5], [0.0], [0.5]])
    below = landmarks[CHIN] + frame.v * 0.45 * frame.width + frame.u * offsets * frame.width
    for anchors, reach_w, side in ((still, 0.15, both), (below, 0.15, lo)):
        groups.append((anchors, np.zeros_like(anchors), reach_w, side))

    points = np.concatenate([g[0] for g in groups]).astype(np.float64)
    moves = np.concatenate([g[1] for g in groups]).astype(np.float64)
    sigmas = np.concatenate([np.full(len(g[0]), g[2] * width) for g in groups])
    sides = np.concatenate([np.full(len(g[0]), g[3]) for g in groups])

    new_up = landmarks[list(LIPS_UPPER_INNER)] + moves_up
    new_lo = landmarks[list(LIPS_LOWER_INNER)] + moves_lo
    seam = frame.to_local((new_up + new_lo) / 2.0)
    inner = np.concatenate([new_up, new_lo[::-1]])
    return _Controls(points + moves, moves, sigmas, sides, seam[np.argsort(seam[:, 0])], inner)


def _warp_roi(image, box, controls: _Controls, frame: MouthFrame) -> np.ndarray:
    """The box of ``image`` after the warp: each output pixel samples where it came from.

    The lips part (or close) along a seam, so one smooth field cannot describe the move:
    points above the new seam follow the upper lip's controls, points below it the lower
    lip's and the jaw's. Each field is smooth on its own; the seam between them is where
    the painted mouth opening (or the closed lips' meeting line) lies.
    """
    x0, y0, x1, y1 = box
    gx = np.arange(x0, x1 + 2 * GRID_STEP, GRID_STEP, dtype=np.float64)
    gy = np.arange(y0, y1 + 2 * GRID_STEP, GRID_STEP, dtype=np.float64)
    fields = []
    for side in (_UPPER, _LOWER):
        pick = (controls.sides & side) > 0
        fields.append(
            displacement_field(
                gx, gy, controls.targets[pick], controls.moves[pick], controls.sigmas[pick], 0.02
            )
        )

    axes = np.array([*frame.center, *frame.u, *frame.v], dtype=np.float64)
    seam_u = np.ascontiguousarray(controls.seam[:, 0])
    seam_v = np.ascontiguousarray(controls.seam[:, 1])
    map_x, map_y = seam_split_maps(
        fields[0], fields[1], GRID_STEP, x0, y0, x1 - x0, y1 - y0, axes, seam_u, seam_v
    )
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _mouth_box(roi, box, inner, pad: int):
    """The part of the ROI around the new inner-lip loop: (view, its origin in the frame)."""
    mx0 = max(int(np.floor(inner[:, 0].min())) - pad - box[0], 0)
    my0 = max(int(np.floor(inner[:, 1].min())) - pad - box[1], 0)
    mx1 = min(int(np.ceil(inner[:, 0].max())) + pad - box[0], roi.shape[1])
    my1 = min(int(np.ceil(inner[:, 1].max())) + pad - box[1], roi.shape[0])
    if mx1 <= mx0 or my1 <= my0:
        return None, None
    return roi[my0:my1, mx0:mx1], (box[0] + mx0, box[1] + my0)


def _center_gap(inner, frame: MouthFrame) -> float:
    """Gap between the new inner lips at the middle of the mouth, in px."""
    half = len(inner) // 2
    return float((inner[len(inner) - 1 - half // 2] - inner[half // 2]) @ frame.v)


def _paste_mouth_inside(roi, box, inner, frame: MouthFrame, sample: MouthSample, lip_rgb):
    """Fill the opened mouth with the speaker's own mouth inside, from the atlas.

    The sample is placed with its upper inner lip on the new upper inner lip and stretched
    vertically so its gap matches the new gap; its colours are scaled by how the lip
    colour of this frame differs from the sample's, so lighting changes carry over.
    """
    gap = _center_gap(inner, frame)
    if gap < 1.0:
        return
    soft = max(0.6, 0.012 * frame.width)
    mouth, origin = _mouth_box(roi, box, inner, int(np.ceil(3 * soft)) + 2)
    if mouth is None:
        return

    half = len(inner) // 2
    scale = frame.width / CANON_WIDTH
    stretch = gap / max(sample.gap * scale, 1.0)
    upper_v = frame.to_local(inner[half // 2 : half // 2 + 1])[0, 1]
    # canonical (x, y) -> frame: centre + u*(x - C)*scale + v*(upper_v + (y - y_up)*scale*s)
    columns = np.column_stack([frame.u * scale, frame.v * scale * stretch])
    offset = (
        frame.center
        - frame.u * scale * CENTER
        + frame.v * (upper_v - sample.upper_mid_y * scale * stretch)
        - np.asarray(origin, dtype=np.float64)
    )
    placed = cv2.warpAffine(
        sample.image,
        np.column_stack([columns, offset]),
        (mouth.shape[1], mouth.shape[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )

    gain = np.clip(np.asarray(lip_rgb) / np.maximum(sample.lip_rgb, 1.0), 0.7, 1.4)
    placed = np.clip(placed.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    alpha = _soft_polygon(inner, origin, mouth.shape[:2], soft)
    blend_masked(mouth, placed, alpha)


def _paint_mouth_inside(roi, box, inner, frame: MouthFrame, lip_rgb) -> None:
    """Paint the opened mouth: a dark cavity, a band of upper teeth under the upper lip."""
    gap = _center_gap(inner, frame)
    if gap < 1.0:
        return

    # Work on the mouth's own small box: the blurs are the costly part.
    soft = max(0.6, 0.01 * frame.width)
    mouth, origin = _mouth_box(roi, box, inner, int(np.ceil(3 * soft)) + 2)
    if mouth is None:
        return

    half = len(inner) // 2
    upper = inner[: half + 1] if len(inner) % 2 == 0 else inner[:half]
    teeth_h = min(0.35 * gap, 0.08 * frame.width)
    teeth_loop = np.concatenate([upper, (upper + frame.v * teeth_h)[::-1]])
    cavity_a = _soft_polygon(inner, origin, mouth.shape[:2], soft)
    teeth_a = _soft_polygon(teeth_loop, origin, mouth.shape[:2], soft) * cavity_a

    # A shadowed, slightly red interior reads as a mouth; pure black reads as a hole.
    dark = np.clip(np.asarray(lip_rgb, dtype=np.float32) * (0.42, 0.3, 0.3), 0, 255)
    fill = np.empty_like(mouth)
    fill[:] = dark.astype(np.uint8)
    blend_masked(mouth, fill, cavity_a)

    # Teeth are shaded by the lip colour's brightness so they sit in the scene's lighting.
    light = float(np.clip(np.mean(lip_rgb) / 130.0, 0.7, 1.0))
    fill[:] = np.clip(TEETH_RGB * light, 0, 255).astype(np.uint8)
    blend_masked(mouth, fill, (0.9 * teeth_a).astype(np.float32))


def _soft_polygon(points, origin, shape, sigma: float) -> np.ndarray:
    """A polygon filled with anti-aliased edges and softened by a Gaussian, as float32 alpha."""
    shift = 2  # fillPoly's fixed-point bits: quarter-pixel edges
    loop = np.round((points - origin) * (1 << shift)).astype(np.int32)
    canvas = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(canvas, [loop], 255, lineType=cv2.LINE_AA, shift=shift)
    return cv2.GaussianBlur(canvas.astype(np.float32) * (1.0 / 255.0), (0, 0), sigma)


def _mask_alpha(landmarks, frame: MouthFrame, box) -> np.ndarray:
    """Feathered lower-face mask over the box; exactly zero where nothing may change.

    The feather is wide and smooth, so it is blurred at a quarter of the resolution and
    scaled back up: the same mask at a sixteenth of the cost.
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    scale = 4
    polygon = (lower_face_polygon(landmarks) - (x0, y0)) / scale
    small = np.zeros((-(-h // scale), -(-w // scale)), dtype=np.float32)
    shift = 2
    loop = np.round(polygon * (1 << shift)).astype(np.int32)
    cv2.fillPoly(small, [loop], 1.0, lineType=cv2.LINE_AA, shift=shift)
    small = cv2.GaussianBlur(small, (0, 0), FEATHER * frame.width / scale)
    alpha = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    alpha[alpha < 1.0 / 512.0] = 0.0
    return alpha


def lower_face_alpha(landmarks: np.ndarray, shape) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """The mask e1 blends through, for one face: its box and the (h, w) alpha inside it.

    Public so tests and the evaluator can tell which pixels the renderer may touch.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    frame = mouth_frame(landmarks)
    box = _mask_box(landmarks, frame, shape)
    if box is None:
        return (0, 0, 0, 0), np.zeros((0, 0), dtype=np.float32)
    return box, _mask_alpha(landmarks, frame, box)
