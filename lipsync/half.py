"""Half-precision copies of ONNX models, for the CUDA provider.

TensorRT picks fp16 kernels itself when asked (``trt_fp16_enable``); the CUDA provider runs
the graph in the precision it is written in. So for CUDA we write a copy of the model whose
weights and activations are float16, keeping float32 at its inputs and outputs (a Cast
after each input and before each output), so callers feed and read the same arrays as
before. The copy is made once per model file, checked against the float32 model on the
same random inputs on the provider it will run on, and cached; a copy that strays too far
is remembered as refused and the float32 model is used instead.

Only graphs made of operators that are safe in float16 (no shape, index or scale inputs
that must stay float32) are converted: the Wav2Lip generators are; a user model with other
operators keeps float32.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .cache import atomic_target, cache_dir, write_json_atomic

logger = logging.getLogger(__name__)

# Operators whose every float input and output may be float16 (ONNX allows it for each, and
# onnxruntime's CUDA provider has float16 kernels for each).
SAFE_OPS = frozenset(
    {
        "Add",
        "BatchNormalization",
        "Concat",
        "Conv",
        "ConvTranspose",
        "Identity",
        "LeakyRelu",
        "Mul",
        "Relu",
        "Sigmoid",
        "Sub",
        "Tanh",
    }
)
# Largest difference from the float32 model accepted on a [0, 1] output: one level of an
# 8-bit crop, so the copy moves no crop pixel by more than rounding to 8 bits could.
# Measured on our Wav2Lip architecture with seeded random weights: 0.6-1.5e-5 through
# onnxruntime's CPU provider (which runs some float16 nodes in float32), 2.6e-4 through
# torch's float16 CPU kernels; trained weights, with wider activations, will stray further.
TOLERANCE = 1.0 / 255.0
_FP16_LIMIT = float(np.finfo(np.float16).max)


class HalfConversionError(ValueError):
    """The graph holds an operator that is not converted to float16."""


@dataclass(frozen=True)
class HalfCopy:
    """The outcome of converting one model file: where the copy is, and whether to use it."""

    path: Path  # the float16 copy
    max_abs_diff: float  # against the float32 model on the check's inputs
    tolerance: float
    usable: bool  # max_abs_diff is within tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def to_half(model):
    """A float16 copy of an ``onnx.ModelProto``, float32 at its inputs and outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    unsafe = sorted({node.op_type for node in model.graph.node} - SAFE_OPS)
    if unsafe:
        raise HalfConversionError(f"operators kept in float32: {', '.join(unsafe)}")

    half = copy.deepcopy(model)
    graph = half.graph
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            graph.initializer[index].CopyFrom(_halved(tensor, numpy_helper))

    # Shapes inside the graph are re-inferred by onnxruntime; the float32 ones would be wrong.
    del graph.value_info[:]

    inputs = [v.name for v in graph.input if v.type.tensor_type.elem_type == TensorProto.FLOAT]
    outputs = [v.name for v in graph.output if v.type.tensor_type.elem_type == TensorProto.FLOAT]
    renamed = {name: f"{name}__fp16" for name in inputs}
    produced = {name: f"{name}__fp16" for name in outputs}
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [produced.get(name, name) for name in node.output]
        # An output may also feed later nodes: they read the float16 value.
        node.input[:] = [produced.get(name, name) for name in node.input]

    entry = [
        helper.make_node("Cast", [name], [renamed[name]], to=TensorProto.FLOAT16) for name in inputs
    ]
    exit_ = [
        helper.make_node("Cast", [produced[name]], [name], to=TensorProto.FLOAT) for name in outputs
    ]
    nodes = [*entry, *graph.node, *exit_]
    del graph.node[:]
    graph.node.extend(nodes)

    onnx.checker.check_model(half)
    return half


def half_copy(
    path: Path,
    sha256: str,
    contract,
    provider: str = "CPUExecutionProvider",
    *,
    refresh: bool = False,
    folder: Path | None = None,
) -> HalfCopy:
    """The cached float16 copy of the model at ``path`` (whose SHA-256 is ``sha256``).

    Made the first time and checked against the float32 model on ``provider`` (a few
    seconds); later calls read what was recorded for that provider. ``folder``: where the
    copies and records are kept (default: the cache folder's ``fp16/``). Raises
    :class:`HalfConversionError` for a graph that cannot be converted.
    """
    import onnx

    folder = folder or cache_dir() / "fp16"
    out = folder / f"{sha256}.onnx"
    record = folder / f"{sha256}.{provider}.json"
    if out.is_file() and record.is_file() and not refresh:
        data = json.loads(record.read_text())
        return HalfCopy(out, data["max_abs_diff"], data["tolerance"], data["usable"])

    if refresh or not out.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        half = to_half(onnx.load(str(path)))
        with atomic_target(out) as partial:  # two workers may make the same copy at once
            onnx.save(half, partial)

    diff = compare(path, out, contract, provider)
    made = HalfCopy(out, diff, TOLERANCE, diff <= TOLERANCE)
    write_json_atomic(record, made.to_dict())
    if made.usable:
        logger.info("float16 copy of %s on %s: max abs difference %.1e", path.name, provider, diff)
    else:
        logger.warning(
            "float16 copy of %s differs by %.1e on %s (over %.1e): float32 is used",
            path.name, diff, provider, TOLERANCE,
        )  # fmt: skip
    return made


def compare(
    full: Path,
    half: Path,
    contract,
    provider: str = "CPUExecutionProvider",
    batch: int = 4,
    seed: int = 0,
) -> float:
    """Largest output difference between two models on the same seeded random inputs."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    ranges = {contract.mel_input: contract.mel_range, contract.video_input: contract.video_range}
    feeds = {
        name: rng.uniform(*ranges[name], (batch, *shape)).astype(np.float32)
        for name, shape in contract.input_shapes().items()
    }

    results = []
    for model in (full, half):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(model), options, providers=[provider])
        (out,) = session.run([contract.output], feeds)
        results.append(out.astype(np.float64))
    return float(np.abs(results[0] - results[1]).max())


def _halved(tensor, numpy_helper):
    values = numpy_helper.to_array(tensor)
    clipped = np.clip(values, -_FP16_LIMIT, _FP16_LIMIT)
    return numpy_helper.from_array(clipped.astype(np.float16), tensor.name)
