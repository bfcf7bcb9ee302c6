"""Tests for lipsync.convert.wav2lip and models.import_checkpoint: our Wav2Lip 96 generator,
its checkpoint loading, ONNX export, torch-vs-ONNX parity and installation.

A seeded random instance stands in for the authors' weights (which are not ours to ship).
"""

from __future__ import annotations

import importlib
import json
import sys

import numpy as np
import pytest

from lipsync.errors import InvalidFormatError, MissingDependencyError

torch = pytest.importorskip(
    "torch", reason="torch is not installed (pip install 'lipsync[convert]')"
)
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

from lipsync import models  # noqa: E402
from lipsync.convert import wav2lip  # noqa: E402

PARAMETERS = 36_298_035  # the published generator's size, counted from its layer list


def _seeded_model(seed: int = 7) -> wav2lip.Wav2Lip96:
    """A random generator whose batch norms are not identities, so the export must fold them."""
    torch.manual_seed(seed)
    model = wav2lip.Wav2Lip96()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _save_authors_way(state: dict, path) -> None:
    """A checkpoint laid out as the authors save theirs: DataParallel names, extra entries."""
    prefixed = {"module." + key: value for key, value in state.items()}
    torch.save({"state_dict": prefixed, "global_step": 1, "global_epoch": 1}, path)


def _face(session_or_model, mel: np.ndarray, video: np.ndarray) -> np.ndarray:
    if isinstance(session_or_model, torch.nn.Module):
        with torch.no_grad():
            return session_or_model(torch.from_numpy(mel), torch.from_numpy(video)).numpy()
    return session_or_model.run(["face"], {"mel": mel, "video": video})[0]


@pytest.fixture(scope="module")
def model() -> wav2lip.Wav2Lip96:
    return _seeded_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "generator.onnx"
    return wav2lip.export_onnx(model, path)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("pth") / "wav2lip.pth"
    _save_authors_way(model.state_dict(), path)
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "models"


def test_layout_matches_the_published_generator(model):
    mel, video = wav2lip.random_inputs(2)
    face = _face(model, mel, video)

    assert sum(p.numel() for p in model.parameters()) == PARAMETERS
    assert face.shape == (2, 3, 96, 96)
    assert face.min() >= 0.0 and face.max() <= 1.0
    # Not saturated: the parity checks below compare values that vary.
    assert face.std() > 0.01

    names = set(model.state_dict())
    for key in (
        "face_encoder_blocks.0.0.conv_block.0.weight",
        "face_encoder_blocks.6.1.conv_block.1.running_var",
        "audio_encoder.0.conv_block.0.weight",
        "audio_encoder.12.conv_block.1.bias",
        "face_decoder_blocks.6.2.conv_block.1.num_batches_tracked",
        "output_block.1.weight",
    ):
        assert key in names


def test_checkpoint_saved_the_authors_way_loads_as_it_is(model, checkpoint):
    loaded = wav2lip.load_checkpoint(checkpoint)

    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_export_honours_the_contract_and_matches_torch(model, exported):
    import onnxruntime as ort

    models.check_onnx(exported, models.load_contract("wav2lip96"))

    report = wav2lip.check_parity(model, exported, batch_sizes=(1, 4))
    assert report.max_abs_diff < 1e-4
    assert report.batch_sizes == (1, 4)

    # A batch of 32 gives each sample what a batch of one gives it.
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    mel, video = wav2lip.random_inputs(32, seed=3)
    batched = _face(session, mel, video)
    assert batched.shape == (32, 3, 96, 96)
    for index in (0, 17, 31):
        single = _face(session, mel[index : index + 1], video[index : index + 1])
        assert np.max(np.abs(single[0] - batched[index])) < 1e-5


def test_parity_failure_is_an_internal_error(exported):
    from lipsync.errors import InternalError

    with pytest.raises(InternalError, match="differs from PyTorch"):
        wav2lip.check_parity(_seeded_model(seed=8), exported, batch_sizes=(1,))


def test_import_of_a_checkpoint_installs_a_verified_model(checkpoint, home):
    status = models.import_onnx(checkpoint)

    # wav2lip.pth is the manifest's checkpoint for e2.
    assert status.name == "e2"
    assert status.installed and status.verified
    assert status.path == home / "wav2lip_96.onnx"
    models.check_onnx(status.path, models.load_contract("wav2lip96"))
    assert models.require_model("e2").verified

    record = json.loads((home / "registry.json").read_text())["models"]["e2"]
    assert record["imported_from"] == str(checkpoint.resolve())
    assert not list(home.glob(".*.tmp"))


@pytest.mark.parametrize("fault", ["renamed key", "missing key", "wrong shape"])
def test_unfit_weights_are_refused_and_nothing_installed(model, tmp_path, home, fault):
    state = dict(model.state_dict())
    if fault == "renamed key":
        state["output_block.9.weight"] = state.pop("output_block.1.weight")
    elif fault == "missing key":
        del state["audio_encoder.3.conv_block.1.running_mean"]
    else:
        state["face_decoder_blocks.3.0.conv_block.0.weight"] = torch.zeros(768, 384, 5, 5)
    path = tmp_path / "broken.pth"
    _save_authors_way(state, path)

    with pytest.raises(InvalidFormatError, match="broken.pth"):
        models.import_checkpoint(path, name="mine")
    assert not (home / "mine.onnx").exists()
    assert not (home / "registry.json").exists()


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path, home):
    path = tmp_path / "notes.pth"
    path.write_bytes(b"not a checkpoint at all")

    with pytest.raises(InvalidFormatError, match="not a readable PyTorch checkpoint"):
        models.import_onnx(path)
    assert not home.exists() or not any(home.iterdir())


def test_unknown_suffix_is_refused(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)

    with pytest.raises(InvalidFormatError, match="expected an .onnx file or a PyTorch"):
        models.import_onnx(path)


def test_without_torch_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "lipsync.convert.wav2lip")

    with pytest.raises(MissingDependencyError, match=r"lipsync\[convert\]"):
        importlib.import_module("lipsync.convert.wav2lip")
