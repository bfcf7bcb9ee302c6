"""A small TFLite-to-ONNX converter for the face models bundled in the mediapipe wheel.

It covers the op types of MediaPipe's face detectors (short and full range) and of its
468-point face mesh: convolutions, depthwise convolutions, additions, PReLU and ReLU, max
pooling, padding, reshapes, concatenations, bilinear resizing and depth-to-space, with
weights stored as float16 (DEQUANTIZE) or sparse (DENSIFY); both are folded into float32
constants at conversion. Anything else is refused by name, never guessed.

TFLite keeps activations as NHWC; ONNX convolutions want NCHW. The converted graph takes the
same NHWC input as the TFLite model, transposes it once, runs NCHW throughout, and hands
back every output in the TFLite model's own layout, so a caller sees the same tensors. The
batch axis is dynamic. Reading the flatbuffer needs the ``tflite`` package (pure Python,
the ``convert`` extra).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cache import atomic_target
from ..errors import InvalidFormatError, MissingDependencyError

logger = logging.getLogger(__name__)

OPSET = 17
# The op types this converter handles; DEQUANTIZE and DENSIFY only on constant weights.
SUPPORTED_OPS = (
    "ADD",
    "CONCATENATION",
    "CONV_2D",
    "DENSIFY",
    "DEPTHWISE_CONV_2D",
    "DEPTH_TO_SPACE",
    "DEQUANTIZE",
    "MAX_POOL_2D",
    "PAD",
    "PRELU",
    "RELU",
    "RELU6",
    "RESHAPE",
    "RESIZE_BILINEAR",
)
# NHWC axis -> NCHW axis, for ops that name an axis of a 4-D activation.
_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


@dataclass
class ConversionReport:
    """What one conversion did."""

    source: Path  # the .tflite file read
    target: Path  # the .onnx file written
    ops: dict[str, int]  # TFLite op type -> how many the model holds
    inputs: dict[str, list]  # ONNX input name -> shape ("N" for the batch axis)
    outputs: dict[str, list]  # ONNX output name -> shape
    folded: int = 0  # constant tensors computed at conversion (dequantized, densified)


def tflite_ops(path: str | os.PathLike[str]) -> Counter:
    """How many operators of each type a .tflite model holds (by builtin op name)."""
    model = _read(Path(path))
    names = _op_names()
    graph = model.Subgraphs(0)
    codes = [_op_code(model.OperatorCodes(i), names) for i in range(model.OperatorCodesLength())]
    return Counter(codes[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength()))


def convert_tflite(
    source: str | os.PathLike[str], target: str | os.PathLike[str]
) -> ConversionReport:
    """Convert a single-subgraph float .tflite model to an ONNX file with a dynamic batch.

    Raises:
        MissingDependencyError: the ``tflite`` or ``onnx`` package is missing.
        InvalidFormatError: not a TFLite model, or it holds an op this converter lacks.
    """
    onnx = _onnx()
    source, target = Path(source), Path(target)
    model = _read(source)
    if model.SubgraphsLength() != 1:
        raise InvalidFormatError(f"{source.name}: expected one subgraph, found more")

    builder = _GraphBuilder(model, source.name)
    graph = builder.build()
    onnx_model = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
        producer_name="lipsync.convert.tflite",
    )
    onnx_model.ir_version = 8  # readable by every onnxruntime this project supports
    onnx.checker.check_model(onnx_model)

    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(target) as tmp:
        onnx.save(onnx_model, tmp)

    report = ConversionReport(
        source=source,
        target=target,
        ops=dict(tflite_ops(source)),
        inputs={v.name: _shape_of(v) for v in graph.input},
        outputs={v.name: _shape_of(v) for v in graph.output},
        folded=builder.folded,
    )
    logger.info("converted %s -> %s (%s)", source.name, target.name, report.ops)
    return report


@dataclass
class _Value:
    """A TFLite tensor as the ONNX graph holds it."""

    name: str  # ONNX value name
    shape: tuple[int, ...]  # TFLite (NHWC) shape, batch included
    nchw: bool  # a 4-D activation stored transposed to NCHW
    const: np.ndarray | None = None  # the data, for a constant


@dataclass
class _GraphBuilder:
    """Walks the TFLite operators in order and emits the equivalent ONNX nodes."""

    model: object
    file_name: str
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    values: dict[int, _Value] = field(default_factory=dict)
    folded: int = 0
    _count: int = 0

    def build(self):
        onnx = _onnx()
        helper = onnx.helper
        graph = self.model.Subgraphs(0)
        names = _op_names()
        codes = [
            _op_code(self.model.OperatorCodes(i), names)
            for i in range(self.model.OperatorCodesLength())
        ]
        unsupported = sorted(set(codes) - set(SUPPORTED_OPS))
        if unsupported:
            raise InvalidFormatError(
                f"{self.file_name} uses op types this converter lacks: {', '.join(unsupported)}"
            )

        # Inputs: NHWC as the TFLite model takes them, with a dynamic batch.
        inputs = []
        for i in range(graph.InputsLength()):
            index = graph.Inputs(i)
            tensor = graph.Tensors(index)
            name = _clean(tensor.Name())
            shape = tuple(int(d) for d in tensor.ShapeAsNumpy())
            inputs.append(helper.make_tensor_value_info(name, _FLOAT(), ["N", *shape[1:]]))
            if len(shape) == 4:
                self.values[index] = _Value(self._fresh(name), shape, True)
                self._node("Transpose", [name], [self.values[index].name], perm=[0, 3, 1, 2])
            else:
                self.values[index] = _Value(name, shape, False)

        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            self._convert(codes[op.OpcodeIndex()], op, graph)

        # Outputs: back in the TFLite layout.
        outputs = []
        for i in range(graph.OutputsLength()):
            index = graph.Outputs(i)
            value = self.values[index]
            name = _clean(graph.Tensors(index).Name())
            if value.nchw:
                self._node("Transpose", [value.name], [name], perm=[0, 2, 3, 1])
            else:
                self._node("Identity", [value.name], [name])
            outputs.append(helper.make_tensor_value_info(name, _FLOAT(), ["N", *value.shape[1:]]))
        return helper.make_graph(self.nodes, "converted", inputs, outputs, self.initializers)

    # --- one TFLite operator -------------------------------------------------------------

    def _convert(self, code: str, op, graph) -> None:
        ins = [op.Inputs(j) for j in range(op.InputsLength())]
        out = op.Outputs(0)
        out_shape = tuple(int(d) for d in graph.Tensors(out).ShapeAsNumpy())

        if code == "DEQUANTIZE":
            self._fold(out, out_shape, self._constant(ins[0], graph).astype(np.float32))
        elif code == "DENSIFY":
            self._fold(out, out_shape, self._constant(ins[0], graph))
        elif code in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            self._conv(code, op, ins, out, out_shape, graph)
        elif code == "ADD":
            self._add(op, ins, out, out_shape, graph)
        elif code == "PRELU":
            slope = self._constant(ins[1], graph).astype(np.float32).reshape(-1, 1, 1)
            self._emit("PRelu", [self._act(ins[0]), self._init(slope)], out, out_shape)
        elif code in ("RELU", "RELU6"):
            self._activation(self._act(ins[0]), out, out_shape, {"RELU": 1, "RELU6": 3}[code])
        elif code == "MAX_POOL_2D":
            self._max_pool(op, ins, out, out_shape)
        elif code == "PAD":
            self._pad(ins, out, out_shape, graph)
        elif code == "RESHAPE":
            self._reshape(ins, out, out_shape)
        elif code == "CONCATENATION":
            self._concat(op, ins, out, out_shape)
        elif code == "RESIZE_BILINEAR":
            self._resize(op, ins, out, out_shape)
        elif code == "DEPTH_TO_SPACE":
            options = _options(op, "DepthToSpaceOptions")
            self._emit(
                "DepthToSpace",
                [self._act(ins[0])],
                out,
                out_shape,
                blocksize=options.BlockSize(),
                mode="DCR",  # TFLite's channel order: (row offset, column offset, channel)
            )

    def _conv(self, code: str, op, ins, out, out_shape, graph) -> None:
        depthwise = code == "DEPTHWISE_CONV_2D"
        options = _options(op, "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions")
        weights = self._constant(ins[1], graph).astype(np.float32)
        in_shape = self.values[ins[0]].shape
        # TFLite: conv (O, KH, KW, I), depthwise (1, KH, KW, I * multiplier);
        # ONNX: (O, I / group, KH, KW).
        kernel = weights.transpose(3, 0, 1, 2) if depthwise else weights.transpose(0, 3, 1, 2)
        group = in_shape[3] if depthwise else 1
        dilation = (options.DilationHFactor(), options.DilationWFactor())
        stride = (options.StrideH(), options.StrideW())
        pads = _pads(options.Padding(), in_shape[1:3], kernel.shape[2:], stride, dilation)

        inputs = [self._act(ins[0]), self._init(np.ascontiguousarray(kernel))]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self._init(self._constant(ins[2], graph).astype(np.float32)))
        raw = self._fresh("conv")
        self._node(
            "Conv",
            inputs,
            [raw],
            group=group,
            strides=list(stride),
            dilations=list(dilation),
            pads=pads,
            kernel_shape=list(kernel.shape[2:]),
        )
        self._activation(raw, out, out_shape, options.FusedActivationFunction())

    def _add(self, op, ins, out, out_shape, graph) -> None:
        operands = []
        for index in ins[:2]:
            if index in self.values and self.values[index].const is None:
                operands.append(self.values[index].name)
                continue
            # A constant operand must follow the activation's layout.
            data = self._constant(index, graph).astype(np.float32)
            if len(out_shape) == 4 and data.ndim == 4:
                data = data.transpose(0, 3, 1, 2)
            elif len(out_shape) == 4 and data.ndim == 1:
                data = data.reshape(-1, 1, 1)
            operands.append(self._init(data))
        raw = self._fresh("add")
        self._node("Add", operands, [raw])
        options = _options(op, "AddOptions")
        self._activation(raw, out, out_shape, options.FusedActivationFunction())

    def _max_pool(self, op, ins, out, out_shape) -> None:
        options = _options(op, "Pool2DOptions")
        kernel = (options.FilterHeight(), options.FilterWidth())
        stride = (options.StrideH(), options.StrideW())
        in_shape = self.values[ins[0]].shape
        pads = _pads(options.Padding(), in_shape[1:3], kernel, stride, (1, 1))
        raw = self._fresh("pool")
        self._node(
            "MaxPool",
            [self._act(ins[0])],
            [raw],
            kernel_shape=list(kernel),
            strides=list(stride),
            pads=pads,
        )
        self._activation(raw, out, out_shape, options.FusedActivationFunction())

    def _pad(self, ins, out, out_shape, graph) -> None:
        paddings = self._constant(ins[1], graph).astype(np.int64)  # (rank, 2) before, after
        value = self.values[ins[0]]
        if value.nchw:
            paddings = paddings[[0, 3, 1, 2]]
        pads = np.concatenate([paddings[:, 0], paddings[:, 1]])
        self._emit("Pad", [value.name, self._init(pads)], out, out_shape, mode="constant")

    def _reshape(self, ins, out, out_shape) -> None:
        value = self.values[ins[0]]
        source = value.name
        if value.nchw:  # reshape the NHWC order the TFLite model meant
            source = self._fresh("nhwc")
            self._node("Transpose", [value.name], [source], perm=[0, 2, 3, 1])
        target = np.asarray([0, *out_shape[1:]], np.int64)  # 0: keep the (dynamic) batch
        name = self._fresh("reshape")
        self._node("Reshape", [source, self._init(target)], [name])
        self._store(out, out_shape, name, from_nhwc=True)

    def _concat(self, op, ins, out, out_shape) -> None:
        options = _options(op, "ConcatenationOptions")
        axis = options.Axis() % len(out_shape)
        nchw = len(out_shape) == 4 and all(self.values[i].nchw for i in ins)
        names = [self.values[i].name for i in ins]
        if len(out_shape) == 4 and not nchw:
            raise InvalidFormatError(f"{self.file_name}: a 4-D concatenation of mixed layouts")
        raw = self._fresh("concat")
        self._node("Concat", names, [raw], axis=_NCHW_AXIS[axis] if nchw else axis)
        self._activation(raw, out, out_shape, options.FusedActivationFunction())

    def _resize(self, op, ins, out, out_shape) -> None:
        options = _options(op, "ResizeBilinearOptions")
        in_shape = self.values[ins[0]].shape
        scales = np.asarray(
            [1.0, 1.0, out_shape[1] / in_shape[1], out_shape[2] / in_shape[2]], np.float32
        )
        if options.AlignCorners():
            mode = "align_corners"
        elif options.HalfPixelCenters():
            mode = "half_pixel"
        else:
            mode = "asymmetric"
        self._emit(
            "Resize",
            [self._act(ins[0]), "", self._init(scales)],
            out,
            out_shape,
            mode="linear",
            coordinate_transformation_mode=mode,
        )

    # --- helpers ---------------------------------------------------------------------------

    def _activation(self, source: str, out: int, out_shape, function: int) -> None:
        """Apply a TFLite fused activation (0 none, 1 ReLU, 2 ReLU -1..1, 3 ReLU6)."""
        if function == 0:
            self._store(out, out_shape, source)
            return
        name = self._fresh("act")
        if function == 1:
            self._node("Relu", [source], [name])
        elif function in (2, 3):
            low, high = (-1.0, 1.0) if function == 2 else (0.0, 6.0)
            bounds = [self._init(np.float32(low)), self._init(np.float32(high))]
            self._node("Clip", [source, *bounds], [name])
        else:
            raise InvalidFormatError(f"{self.file_name}: fused activation {function} unsupported")
        self._store(out, out_shape, name)

    def _emit(self, op_type: str, inputs: list[str], out: int, out_shape, **attributes) -> None:
        name = self._fresh(op_type.lower())
        self._node(op_type, inputs, [name], **attributes)
        self._store(out, out_shape, name)

    def _store(self, out: int, out_shape, name: str, from_nhwc: bool = False) -> None:
        nchw = len(out_shape) == 4 and not from_nhwc
        if len(out_shape) == 4 and from_nhwc:  # a reshape's 4-D result goes back to NCHW
            back = self._fresh("nchw")
            self._node("Transpose", [name], [back], perm=[0, 3, 1, 2])
            name, nchw = back, True
        self.values[out] = _Value(name, tuple(out_shape), nchw)

    def _act(self, index: int) -> str:
        return self.values[index].name

    def _fold(self, out: int, out_shape, data: np.ndarray) -> None:
        self.values[out] = _Value(self._fresh("const"), tuple(out_shape), False, const=data)
        self.folded += 1

    def _constant(self, index: int, graph) -> np.ndarray:
        """A constant tensor's data: folded earlier, or read from its buffer."""
        if index in self.values:
            const = self.values[index].const
            if const is None:
                raise InvalidFormatError(f"{self.file_name}: tensor {index} is not constant")
            return const
        return _tensor_data(self.model, graph.Tensors(index), self.file_name)

    def _init(self, data: np.ndarray) -> str:
        onnx = _onnx()
        name = self._fresh("w")
        self.initializers.append(onnx.numpy_helper.from_array(np.asarray(data), name))
        return name

    def _node(self, op_type: str, inputs: list[str], outputs: list[str], **attributes) -> None:
        onnx = _onnx()
        self.nodes.append(onnx.helper.make_node(op_type, inputs, outputs, **attributes))

    def _fresh(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"


def _pads(padding: int, in_hw, kernel_hw, stride, dilation) -> list[int]:
    """ONNX pads (top, left, bottom, right) for TFLite padding 0 = SAME, 1 = VALID."""
    if padding == 1:
        return [0, 0, 0, 0]
    before, after = [], []
    for size, k, s, d in zip(in_hw, kernel_hw, stride, dilation, strict=True):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        before.append(total // 2)  # TFLite puts the odd pixel after
        after.append(total - total // 2)
    return before + after


def _tensor_data(model, tensor, file_name: str) -> np.ndarray:
    """A constant tensor's values as numpy: dense, sparse (densified) or quantized."""
    buffer = model.Buffers(tensor.Buffer())
    if buffer is None or buffer.DataLength() == 0:
        raise InvalidFormatError(f"{file_name}: tensor {_clean(tensor.Name())} holds no data")
    dtype = _DTYPES.get(tensor.Type())
    if dtype is None:
        raise InvalidFormatError(f"{file_name}: tensor type {tensor.Type()} unsupported")
    raw = buffer.DataAsNumpy().tobytes()
    values = np.frombuffer(raw, dtype=dtype)
    shape = tuple(int(d) for d in tensor.ShapeAsNumpy())

    sparsity = tensor.Sparsity()
    data = _densify(values, shape, sparsity, file_name) if sparsity else values.reshape(shape)

    quant = tensor.Quantization()
    if dtype in (np.int8, np.uint8) and quant is not None and quant.ScaleLength():
        scale = quant.ScaleAsNumpy().astype(np.float32)
        zero = quant.ZeroPointAsNumpy().astype(np.float32)
        axis = quant.QuantizedDimension()
        view = [1] * data.ndim
        view[axis] = -1
        if scale.size > 1:
            scale, zero = scale.reshape(view), zero.reshape(view)
        return (data.astype(np.float32) - zero) * scale
    return data


def _densify(values: np.ndarray, shape: tuple[int, ...], sparsity, file_name: str) -> np.ndarray:
    """Expand a TFLite sparse tensor (dense and CSR dimensions, no blocks) to a dense array."""
    order = [int(d) for d in sparsity.TraversalOrderAsNumpy()]
    if sparsity.BlockMapLength() or order != list(range(len(shape))):
        raise InvalidFormatError(f"{file_name}: block-sparse weights are not supported")

    dims = []
    for d in range(sparsity.DimMetadataLength()):
        meta = sparsity.DimMetadata(d)
        if meta.Format() == 0:  # DENSE
            dims.append(("dense", meta.DenseSize(), None, None))
        else:  # SPARSE_CSR: segments per parent position, indices of the stored entries
            segments = _index_vector(meta.ArraySegments(), meta.ArraySegmentsType())
            indices = _index_vector(meta.ArrayIndices(), meta.ArrayIndicesType())
            dims.append(("csr", None, segments, indices))

    dense = np.zeros(shape, dtype=values.dtype)
    flat = dense.reshape(-1)
    strides = np.cumprod([1, *shape[::-1]])[:-1][::-1]
    cursor = iter(values)

    def walk(level: int, parent: int, offset: int) -> None:
        kind, size, segments, indices = dims[level]
        if kind == "dense":
            positions = [(i, parent * size + i) for i in range(size)]
        else:
            positions = [
                (int(indices[k]), k) for k in range(segments[parent], segments[parent + 1])
            ]
        for coordinate, child in positions:
            at = offset + coordinate * strides[level]
            if level == len(dims) - 1:
                flat[at] = next(cursor)
            else:
                walk(level + 1, child, at)

    walk(0, 0, 0)
    return dense


def _index_vector(table, kind: int) -> np.ndarray:
    """The values of a SparseIndexVector union (1 Int32, 2 Uint16, 3 Uint8)."""
    import tflite

    cls = {1: tflite.Int32Vector, 2: tflite.Uint16Vector, 3: tflite.Uint8Vector}[kind]
    vector = cls()
    vector.Init(table.Bytes, table.Pos)
    return vector.ValuesAsNumpy()


def _options(op, kind: str):
    """An operator's builtin options table, typed."""
    import tflite

    cls = getattr(tflite, kind)
    options = cls()
    table = op.BuiltinOptions()
    options.Init(table.Bytes, table.Pos)
    return options


def _read(path: Path):
    tflite = _tflite()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidFormatError(f"cannot read {path}: {exc}") from exc
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise InvalidFormatError(f"{path.name} is not a TFLite model (no TFL3 identifier)")
    return tflite.Model.GetRootAsModel(data, 0)


def _op_names() -> dict[int, str]:
    import tflite

    return {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}


def _op_code(code, names: dict[int, str]) -> str:
    # Newer files keep small codes in the deprecated byte field and large ones in the new one.
    number = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    return names.get(number, f"op{number}")


def _clean(name: bytes | None) -> str:
    text = (name or b"").decode("utf-8", "replace")
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in text) or "tensor"


def _shape_of(value) -> list:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def _FLOAT() -> int:  # noqa: N802  (reads as the constant it returns)
    return _onnx().TensorProto.FLOAT


_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8}


def _tflite():
    try:
        import tflite
    except ImportError as exc:
        raise MissingDependencyError(
            "converting TFLite models needs the tflite package",
            hint="pip install 'lipsync[convert]' (or pip install tflite)",
        ) from exc
    return tflite


def _onnx():
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401  (a submodule, not loaded by `import onnx`)
    except ImportError as exc:
        raise MissingDependencyError(
            "converting models needs onnx", hint="pip install onnx"
        ) from exc
    return onnx
