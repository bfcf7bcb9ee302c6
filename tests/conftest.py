"""Fixtures shared across test modules: media paths and a face with its landmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
CLIPS = ("talk1", "talk2", "talk3", "talk4", "talk5")


@pytest.fixture(scope="session")
def shared_media() -> Path:
    """The folder of real clips; tests that need it skip where it is absent."""
    if not (SHARED_MEDIA / "talk1.mp4").exists():
        pytest.skip(f"real test clips not found at {SHARED_MEDIA} (they are not shipped)")
    return SHARED_MEDIA


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """The test session caches in a folder of its own, never in the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIPSYNC_HOME", str(tmp_path_factory.mktemp("lipsync_home")))
        yield


@pytest.fixture(scope="module")
def receiver():
    """A webhook receiver (and file server) on 127.0.0.1 for one test module."""
    from serving import Receiver  # the server extra's tests only: imported when asked for

    served = Receiver()
    yield served
    served.close()


def face_landmarks(image: np.ndarray) -> np.ndarray | None:
    """(468, 2) px landmarks of the largest face in an RGB image, from a static mesh pass."""
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
        found = mesh.process(np.ascontiguousarray(image)).multi_face_landmarks
    if not found:
        return None
    h, w = image.shape[:2]
    return np.array([(p.x * w, p.y * h) for p in found[0].landmark[:468]], dtype=np.float32)


@pytest.fixture(scope="session")
def portrait() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's public-domain astronaut portrait cropped to the face, and its landmarks."""
    from skimage import data

    image = np.ascontiguousarray(data.astronaut()[0:320, 100:340])
    landmarks = face_landmarks(image)
    assert landmarks is not None, "the bundled portrait should always show a face"
    return image, landmarks
