"""English phone segmentation of a voice track, and the mouth shape each phone calls for.

Phones come from PocketSphinx's bundled US-English acoustic model decoding against its phone
language model ("allphone" search), fully offline. Each phone is mapped to one of a few
mouth shapes, the classes a viewer can tell apart on a face:

- ``closed``: the lips meet (P, B, M);
- ``lip_teeth``: the lower lip touches the upper teeth (F, V);
- ``rounded``: the lips are rounded or pushed forward (OW, UW, UH, W, AO, OY);
- ``open``: the jaw drops for an open vowel (AA, AE, AH, AY, AW, EH);
- ``rest``: silence and non-speech noises (SIL, +NSN+, +SPN+);
- ``other``: every other phone, whose shape the lips alone do not pin down.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .errors import MissingDependencyError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz; the acoustic model's rate
SHAPES = ("rest", "closed", "lip_teeth", "rounded", "open", "other")

_SHAPE_OF_PHONE = {
    **dict.fromkeys(("P", "B", "M"), "closed"),
    **dict.fromkeys(("F", "V"), "lip_teeth"),
    **dict.fromkeys(("OW", "UW", "UH", "W", "AO", "OY"), "rounded"),
    **dict.fromkeys(("AA", "AE", "AH", "AY", "AW", "EH"), "open"),
}
_FRAME_RATE = 100  # PocketSphinx segment times are in 10 ms frames
# Long recordings are decoded in pieces of about this length, cut at the quietest 10 ms
# near each boundary: one utterance's search memory grows with its length.
_CHUNK_S = 30.0
_CUT_SEARCH_S = 2.0


@dataclass(frozen=True)
class Phone:
    """One recognised phone."""

    label: str  # ARPAbet phone (AA, B, ...), SIL for silence, +NSN+/+SPN+ for noise
    start: float  # seconds from the first sample
    end: float  # seconds, exclusive
    shape: str  # the mouth shape it calls for, one of SHAPES


def phone_shape(label: str) -> str:
    """The mouth shape (one of SHAPES) an ARPAbet phone label calls for.

    Stress digits are ignored (``AA1`` is ``AA``); silence, noise and unknown non-speech
    labels are ``rest``.
    """
    base = label.strip().upper().rstrip("012")
    if not base or base.startswith(("SIL", "+", "<")):
        return "rest"
    return _SHAPE_OF_PHONE.get(base, "other")


def segment_phones(wav: np.ndarray) -> list[Phone]:
    """Phones of 16 kHz mono float audio, in time order, covering the recording.

    Raises:
        MissingDependencyError: pocketsphinx is not installed.
        ValueError: the samples are not a 1-D float array.
    """
    wav = np.asarray(wav)
    if wav.ndim != 1 or not np.issubdtype(wav.dtype, np.floating):
        raise ValueError(f"expected 1-D float samples, got {wav.dtype} {wav.shape}")
    if wav.size < SAMPLE_RATE // 10:  # under 100 ms: nothing to recognise
        return []

    decoder = _decoder()
    pcm = (np.clip(wav, -1.0, 1.0) * 32767.0).astype(np.int16)
    phones: list[Phone] = []
    for start, stop in _chunks(pcm):
        offset = start / SAMPLE_RATE
        decoder.start_utt()
        decoder.process_raw(pcm[start:stop].tobytes(), full_utt=True)
        decoder.end_utt()
        for seg in decoder.seg():
            phones.append(
                Phone(
                    label=seg.word,
                    start=offset + seg.start_frame / _FRAME_RATE,
                    end=offset + (seg.end_frame + 1) / _FRAME_RATE,
                    shape=phone_shape(seg.word),
                )
            )
    logger.debug("phones: %d in %.1f s of audio", len(phones), wav.size / SAMPLE_RATE)
    return phones


def shapes_at(phones: list[Phone], frame_times: np.ndarray) -> np.ndarray:
    """(n,) str: the shape of the phone under the middle of each video frame.

    A frame lasts until the next one starts (the last one as long as the typical frame);
    frames no phone covers are ``rest``.
    """
    times = np.asarray(frame_times, dtype=np.float64)
    out = np.full(times.shape, "rest", dtype=f"<U{max(map(len, SHAPES))}")
    if times.size == 0 or not phones:
        return out
    step = float(np.median(np.diff(times))) if times.size > 1 else 0.04
    middles = times + np.append(np.diff(times), step) / 2

    starts = np.array([p.start for p in phones])
    ends = np.array([p.end for p in phones])
    found = np.searchsorted(starts, middles, side="right") - 1
    inside = (found >= 0) & (middles < ends[np.clip(found, 0, None)])
    labels = np.array([p.shape for p in phones])
    out[inside] = labels[found[inside]]
    return out


def _decoder():
    """A PocketSphinx decoder set up for phone recognition, with its logging silenced."""
    try:
        from pocketsphinx import Decoder, get_model_path
    except ImportError as exc:
        raise MissingDependencyError(
            "phone segmentation needs pocketsphinx", hint="pip install 'pocketsphinx>=5.0'"
        ) from exc
    # loglevel FATAL keeps its start-up report and per-utterance statistics off stderr.
    return Decoder(
        hmm=get_model_path("en-us/en-us"),
        allphone=get_model_path("en-us/en-us-phone.lm.bin"),
        loglevel="FATAL",
    )


def _chunks(pcm: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) sample ranges of about _CHUNK_S, each cut at a quiet 10 ms."""
    size = int(_CHUNK_S * SAMPLE_RATE)
    if pcm.size <= size * 1.5:
        return [(0, pcm.size)]

    hop = SAMPLE_RATE // _FRAME_RATE
    bounds = [0]
    while pcm.size - bounds[-1] > size * 1.5:
        target = bounds[-1] + size
        lo = target - int(_CUT_SEARCH_S * SAMPLE_RATE)
        frames = pcm[lo:target].astype(np.float64).reshape(-1, hop)
        bounds.append(lo + int(np.argmin((frames**2).sum(axis=1))) * hop)
    return list(zip(bounds, [*bounds[1:], pcm.size], strict=True))
