"""Float16 copies of ONNX generators (the CUDA provider's precision), checked on the CPU here."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch is not installed (pip install 'lipsync[convert]')"
)
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
import onnx  # noqa: E402
from onnx import TensorProto  # noqa: E402
from tiny_onnx import random_features, tiny_model  # noqa: E402

from lipsync import half  # noqa: E402
from lipsync.convert.wav2lip import Wav2Lip96, export_onnx  # noqa: E402
from lipsync.errors import InvalidOptionError  # noqa: E402
from lipsync.generators import FaceFrame, get_generator  # noqa: E402
from lipsync.models import import_onnx, load_contract  # noqa: E402
from lipsync.pipeline import DubOptions  # noqa: E402

CPU = "CPUExecutionProvider"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "wav2lip.onnx"
    return export_onnx(Wav2Lip96().eval(), path)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_the_copy_is_float16_inside_and_float32_at_its_edges(exported):
    model = half.to_half(onnx.load(str(exported)))
    graph = model.graph

    kinds = {tensor.data_type for tensor in graph.initializer}
    assert TensorProto.FLOAT16 in kinds and TensorProto.FLOAT not in kinds
    assert [v.type.tensor_type.elem_type for v in graph.input] == [TensorProto.FLOAT] * 2
    assert [v.type.tensor_type.elem_type for v in graph.output] == [TensorProto.FLOAT]
    # A cast after each input, before anything else reads it; one before the output.
    assert [n.op_type for n in graph.node[:2]] == ["Cast", "Cast"]
    assert graph.node[-1].op_type == "Cast" and graph.node[-1].output[0] == "face"
    readers = {name for node in graph.node[2:] for name in node.input}
    assert not readers & {"mel", "video"}


def test_the_copy_matches_float32_and_is_made_once(exported, home, monkeypatch):
    contract = load_contract("wav2lip96")
    made = half.half_copy(exported, "seeded", contract, CPU)

    assert made.usable
    # Something was rounded (weights and activations), but by far less than one 8-bit level.
    assert 0.0 < made.max_abs_diff < half.TOLERANCE
    assert made.path.stat().st_size < 0.6 * exported.stat().st_size
    record = json.loads((made.path.parent / f"seeded.{CPU}.json").read_text())
    assert record["usable"] and record["max_abs_diff"] == made.max_abs_diff

    def no_second_conversion(model):
        raise AssertionError("converted again")

    monkeypatch.setattr(half, "to_half", no_second_conversion)
    assert half.half_copy(exported, "seeded", contract, CPU) == made


def test_graphs_with_other_operators_stay_float32(tmp_path):
    model = onnx.load(str(tiny_model(tmp_path / "tiny.onnx")))
    with pytest.raises(half.HalfConversionError, match="ReduceMean, Slice"):
        half.to_half(model)


def test_the_generator_runs_the_copy_when_asked(exported, home, portrait):
    import_onnx(exported, name="e2")
    image, landmarks = portrait

    outputs = {}
    for precision in ("auto", "fp16"):
        generator = get_generator("e2", precision=precision)
        generator.prepare(random_features(1))
        out = image.copy()
        generator.render([FaceFrame(out, landmarks, 0, 0)])
        outputs[generator.precision] = out
        assert generator.describe() == f"e2 on CPU, {generator.precision}"

    # On the CPU, "auto" keeps float32; the float16 copy paints the same mouth. Rounding
    # can flip a crop pixel by one level, and the unsharp mask (amount 0.5) make that two
    # (measured: 3 pixels of 230,400 by two, a mean of 6e-5 levels).
    assert set(outputs) == {"fp32", "fp16"}
    assert not np.array_equal(outputs["fp32"], image)
    diff = np.abs(outputs["fp32"].astype(int) - outputs["fp16"].astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.01
    assert list((home / "cache" / "fp16").glob(f"*.{CPU}.json"))


def test_an_unconvertible_or_straying_copy_leaves_float32(exported, home, tmp_path, monkeypatch):
    import_onnx(tiny_model(tmp_path / "tiny.onnx"), name="mine")
    assert get_generator("mine", precision="fp16").precision == "fp32"

    # A tolerance nothing meets: the copy is made, refused, and remembered as refused.
    import_onnx(exported, name="e2")
    monkeypatch.setattr(half, "TOLERANCE", 0.0)
    assert get_generator("e2", precision="fp16").precision == "fp32"
    (record,) = (home / "cache" / "fp16").glob(f"*.{CPU}.json")
    assert json.loads(record.read_text())["usable"] is False


def test_precision_and_batch_size_reach_the_model(exported, home):
    import_onnx(exported, name="e2")
    assert get_generator("e2", batch_size=32).batch_size == 32
    with pytest.raises(InvalidOptionError, match="precision"):
        get_generator("e2", precision="fp8")
    with pytest.raises(InvalidOptionError, match="precision"):
        DubOptions(precision="half").validate()
