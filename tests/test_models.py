"""The model manifest, the installed-model registry and the ONNX contract check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lipsync import cli
from lipsync.errors import (
    DataCorruptedError,
    InvalidFormatError,
    InvalidOptionError,
    MissingDependencyError,
    ModelNotInstalledError,
)
from lipsync.generators import get_generator, known
from lipsync.models import (
    REGISTRY_FILE,
    import_onnx,
    list_models,
    load_contract,
    load_manifest,
    models_home,
    require_model,
)

onnx = pytest.importorskip("onnx")
from tiny_onnx import tiny_model  # noqa: E402

CONTRACT = load_contract("wav2lip96")


@pytest.fixture(autouse=True)
def _own_home(tmp_path, monkeypatch):
    """Each test installs into an empty home of its own."""
    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "home"))


def _installed_files() -> list[str]:
    home = models_home()
    return sorted(p.name for p in home.iterdir()) if home.exists() else []


def test_manifest_names_e2_and_e3_with_the_wav2lip_contract():
    manifest = load_manifest()

    assert set(manifest) >= {"e2", "e3"}
    for entry in (manifest["e2"], manifest["e3"]):
        assert entry.contract == CONTRACT
        assert entry.licence == "research only, from the authors"
        assert entry.file.endswith(".onnx")
        # No hash is invented: empty (recorded at import) or a real SHA-256.
        assert entry.sha256 == "" or len(entry.sha256) == 64
    assert manifest["e2"].file != manifest["e3"].file
    assert CONTRACT.input_shapes() == {"mel": (1, 80, 16), "video": (6, 96, 96)}
    assert CONTRACT.output_shapes() == {"face": (3, 96, 96)}
    assert (CONTRACT.colour_order, CONTRACT.channels, CONTRACT.crop_size) == ("BGR", 6, 96)


def test_models_home_follows_lipsync_home(tmp_path):
    assert models_home() == tmp_path / "home" / "models"


def test_a_model_that_honours_the_contract_imports_and_runs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    source = tiny_model(tmp_path / "mine.onnx")
    before = (source.read_bytes(), source.stat().st_mtime_ns)

    status = import_onnx(source, name="mine")

    assert (source.read_bytes(), source.stat().st_mtime_ns) == before
    assert status.installed and status.verified and status.origin == "user"
    assert status.path == models_home() / "mine.onnx"
    listed = {s.name: s for s in list_models()}
    assert listed["mine"].installed and listed["mine"].verified
    assert not listed["e2"].installed
    assert require_model("mine").sha256 == status.sha256

    session = ort.InferenceSession(str(status.path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    for batch in (1, 4):
        mel = rng.uniform(-4, 4, (batch, 1, 80, 16)).astype(np.float32)
        video = rng.uniform(0, 1, (batch, 6, 96, 96)).astype(np.float32)
        (face,) = session.run(["face"], {"mel": mel, "video": video})
        level = mel.mean(axis=(1, 2, 3), keepdims=True)
        expected = 1 / (1 + np.exp(-(video[:, :3] + level)))
        assert face.shape == (batch, 3, 96, 96)
        np.testing.assert_allclose(face, expected, atol=1e-5)


def test_a_user_model_runs_by_its_own_name(tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(InvalidOptionError, match="unknown model 'mine'"):
        get_generator("mine")
    assert known() == ["e1", "e2", "e3"]

    import_onnx(tiny_model(tmp_path / "mine.onnx"), name="mine")

    assert known() == ["e1", "e2", "e3", "mine"]
    generator = get_generator("mine")
    assert generator.name == "mine"
    assert generator.contract == load_contract("wav2lip96"), "the contract recorded at import"


def test_a_file_named_like_a_manifest_model_installs_as_that_model(tmp_path):
    source = tiny_model(tmp_path / load_manifest()["e3"].file)

    status = import_onnx(source)

    assert status.name == "e3" and status.origin == "manifest" and status.verified
    assert status.licence == "research only, from the authors"
    registry = json.loads((models_home() / REGISTRY_FILE).read_text())
    assert registry["models"]["e3"]["sha256"] == status.sha256


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (dict(mel_name="audio"), ["inputs", "audio", "mel"]),
        (dict(video_shape=("N", 6, 48, 48)), ["'video'", "(?, 6, 48, 48)", "(N, 6, 96, 96)"]),
        (dict(video_shape=(1, 6, 96, 96), batch=1), ["fixed batch of 1", "dynamic batch"]),
    ],
    ids=["wrong-input-name", "wrong-shape", "fixed-batch"],
)
def test_a_model_that_breaks_the_contract_is_rejected(tmp_path, build, words):
    source = tiny_model(tmp_path / "bad.onnx", **build)

    with pytest.raises(InvalidFormatError) as caught:
        import_onnx(source, name="bad")

    for word in words:
        assert word in str(caught.value)
    assert "bad.onnx" not in _installed_files()
    assert REGISTRY_FILE not in _installed_files()


def test_a_file_that_is_not_onnx_is_rejected(tmp_path):
    source = tmp_path / "junk.onnx"
    source.write_bytes(b"not a protobuf at all" * 10)

    with pytest.raises(InvalidFormatError, match="not a valid ONNX model"):
        import_onnx(source)
    assert _installed_files() == []


def test_a_corrupted_installed_file_is_not_verified(tmp_path):
    status = import_onnx(tiny_model(tmp_path / "mine.onnx"), name="mine")
    data = bytearray(status.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    status.path.write_bytes(bytes(data))

    listed = {s.name: s for s in list_models()}

    assert listed["mine"].installed and not listed["mine"].verified
    with pytest.raises(DataCorruptedError, match="import the model again"):
        require_model("mine")


def test_e2_without_its_model_says_how_to_import_it():
    with pytest.raises(ModelNotInstalledError) as caught:
        get_generator("e2")

    assert isinstance(caught.value, MissingDependencyError)
    assert "python -m lipsync models import PATH --name e2" in str(caught.value)


def test_cli_lists_and_imports_models(tmp_path, capsys):
    assert cli.main(["models", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert {"e2", "e3"} <= set(listed)
    assert not listed["e2"]["installed"] and not listed["e2"]["verified"]

    source = tiny_model(tmp_path / "mine.onnx")
    assert cli.main(["models", "import", str(source), "--name", "mine", "--json"]) == 0
    imported = json.loads(capsys.readouterr().out)
    assert imported["name"] == "mine" and imported["verified"]

    assert cli.main(["models", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["name", "installed", "verified"]
    assert any(line.split()[:3] == ["mine", "yes", "yes"] for line in table)

    bad = tiny_model(tmp_path / "bad.onnx", batch=1, video_shape=(1, 6, 96, 96))
    assert cli.main(["models", "import", str(bad), "--name", "bad"]) == 3
    assert "fixed batch" in capsys.readouterr().err
    assert cli.main(["models", "import", str(tmp_path / "absent.onnx")]) == 2
