"""``mediapipe``: MediaPipe's own face-mesh API on the CPU, one worker process per chunk."""

from __future__ import annotations

from . import Landmarker, register


@register("mediapipe")
class MediapipeLandmarker(Landmarker):
    """The CPU path: ``faces._FaceFinder`` on each chunk, chunks spread over processes."""

    def analyse(self, info, chunks, analysis_size, workers, progress, tracked):
        from ..faces import _analyse_chunks

        return _analyse_chunks(info, chunks, analysis_size, workers, progress, tracked=tracked)
