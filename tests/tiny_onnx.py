"""A tiny ONNX graph with the wav2lip96 contract's tensors, for tests without real weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from lipsync.audio import AudioFeatures


def tiny_model(
    path: Path,
    *,
    mel_name: str = "mel",
    video_shape: tuple = ("N", 6, 96, 96),
    batch: str | int = "N",
) -> Path:
    """A two-input graph honouring (or breaking) the contract: sigmoid(video[:, :3] + mean(mel))."""
    mel = helper.make_tensor_value_info(mel_name, TensorProto.FLOAT, [batch, 1, 80, 16])
    video = helper.make_tensor_value_info("video", TensorProto.FLOAT, list(video_shape))
    face = helper.make_tensor_value_info("face", TensorProto.FLOAT, [batch, 3, 96, 96])
    constants = [
        helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [3]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
    ]
    nodes = [
        helper.make_node("Slice", ["video", "starts", "ends", "axes"], ["target"]),
        helper.make_node("ReduceMean", [mel_name], ["level"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Add", ["target", "level"], ["raw"]),
        helper.make_node("Sigmoid", ["raw"], ["face"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [mel, video], [face], initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return path


def random_features(n: int) -> AudioFeatures:
    """Audio features for n output frames: seeded random mel windows, the mouth open."""
    rng = np.random.default_rng(3)
    mel = rng.uniform(-4, 4, (n, 80, 16)).astype(np.float32)
    openness = np.ones(n, np.float32)
    return AudioFeatures(mel=mel, openness=openness, active=openness > 0)
