"""The Wav2Lip 96 generator in PyTorch, its checkpoint loader, ONNX export and parity check.

The network follows the published architecture (Prajwal et al., "A Lip Sync Expert Is All
You Need", ACM MM 2020): a face encoder of seven stages takes the 6-channel crop (masked
target + reference) from 96 px down to 1 px, an audio encoder takes the (80, 16) mel window
to a 512-vector, and a decoder of seven stages grows that vector back to 96 px, each stage
joined to the encoder output of the same size. Every unit is a convolution, a batch norm and
a ReLU, optionally added to its input (residual). The module tree is laid out so that the
authors' checkpoints load as they are: ``face_encoder_blocks.S.U.conv_block.{0,1}.*``,
``audio_encoder.U.conv_block.*``, ``face_decoder_blocks.S.U.conv_block.*`` and
``output_block.*``.

Importing this module imports torch; without it, :class:`MissingDependencyError` says how
to install it.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InternalError, InvalidFormatError, MissingDependencyError

try:
    import torch
    from torch import nn
except ImportError as exc:  # torch is an extra: only conversion needs it
    raise MissingDependencyError(
        "converting PyTorch checkpoints needs torch", hint="pip install 'lipsync[convert]'"
    ) from exc

logger = logging.getLogger(__name__)

CROP_SIZE = 96
MEL_SHAPE = (1, 80, 16)  # one mel window after the batch axis
VIDEO_SHAPE = (6, CROP_SIZE, CROP_SIZE)  # masked target crop + reference crop
PARITY_TOLERANCE = 1e-4  # largest torch-vs-ONNX difference accepted on the [0, 1] output
_CHECKPOINT_PREFIX = "module."  # the authors trained under DataParallel

# A downsampling stage: (in channels, out channels, kernel, stride, padding, residual units
# that follow it at the output width, each 3x3 with padding 1).
_FACE_STAGES = [
    (6, 16, 7, 1, 3, 0),  # 96 px
    (16, 32, 3, 2, 1, 2),  # 48 px
    (32, 64, 3, 2, 1, 3),  # 24 px
    (64, 128, 3, 2, 1, 2),  # 12 px
    (128, 256, 3, 2, 1, 2),  # 6 px
    (256, 512, 3, 2, 1, 1),  # 3 px
]
# The mel window (80 bands x 16 steps) shrinks to 3 x 3 before the last two units.
_AUDIO_STAGES = [
    (1, 32, 3, 1, 1, 2),  # 80 x 16
    (32, 64, 3, (3, 1), 1, 2),  # 27 x 16
    (64, 128, 3, 3, 1, 2),  # 9 x 6
    (128, 256, 3, (3, 2), 1, 1),  # 3 x 3
]
# An upsampling stage: (in channels, out channels, stride, padding, output padding, residual
# units). In channels count the encoder features joined to the previous stage's output.
_DECODER_STAGES = [
    (1024, 512, 1, 0, 0, 1),  # 3 px
    (1024, 512, 2, 1, 1, 2),  # 6 px
    (768, 384, 2, 1, 1, 2),  # 12 px
    (512, 256, 2, 1, 1, 2),  # 24 px
    (320, 128, 2, 1, 1, 2),  # 48 px
    (160, 64, 2, 1, 1, 2),  # 96 px
]


class ConvUnit(nn.Module):
    """Convolution, batch norm, optional skip from the input, ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int | tuple[int, int] = 1,
        padding: int = 0,
        *,
        residual: bool = False,
        output_padding: int | None = None,
    ) -> None:
        super().__init__()
        if output_padding is None:
            conv = nn.Conv2d(cin, cout, kernel, stride, padding)
        else:
            conv = nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding)
        # The names "conv_block.0" / "conv_block.1" are the checkpoint's.
        self.conv_block = nn.Sequential(conv, nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


def _down_stage(
    cin: int, cout: int, kernel: int, stride: int | tuple[int, int], padding: int, residuals: int
) -> list[ConvUnit]:
    units = [ConvUnit(cin, cout, kernel, stride, padding)]
    units += [ConvUnit(cout, cout, 3, 1, 1, residual=True) for _ in range(residuals)]
    return units


def _up_stage(
    cin: int, cout: int, stride: int, padding: int, output_padding: int, residuals: int
) -> list[ConvUnit]:
    units = [ConvUnit(cin, cout, 3, stride, padding, output_padding=output_padding)]
    units += [ConvUnit(cout, cout, 3, 1, 1, residual=True) for _ in range(residuals)]
    return units


def _squeeze(channels: int, cout: int) -> list[ConvUnit]:
    """Two unpadded units that take a 3 x 3 map to a 1 x 1 vector."""
    return [ConvUnit(channels, cout, 3, 1, 0), ConvUnit(cout, cout, 1, 1, 0)]


class Wav2Lip96(nn.Module):
    """The Wav2Lip generator for 96 px crops.

    ``forward(mel, video)``: mel (N, 1, 80, 16) on the clipped log-mel scale, video
    (N, 6, 96, 96) BGR / 255 (channels 0-2 the target crop with its lower half zeroed, 3-5
    the reference crop); returns the face (N, 3, 96, 96) in [0, 1].
    """

    def __init__(self) -> None:
        super().__init__()
        face = [nn.Sequential(*_down_stage(*stage)) for stage in _FACE_STAGES]
        face.append(nn.Sequential(*_squeeze(512, 512)))
        self.face_encoder_blocks = nn.ModuleList(face)

        audio = [unit for stage in _AUDIO_STAGES for unit in _down_stage(*stage)]
        self.audio_encoder = nn.Sequential(*audio, *_squeeze(256, 512))

        decoder = [nn.Sequential(ConvUnit(512, 512, 1, 1, 0))]
        decoder += [nn.Sequential(*_up_stage(*stage)) for stage in _DECODER_STAGES]
        self.face_decoder_blocks = nn.ModuleList(decoder)

        # 80 = the last decoder stage's 64 channels + the first face stage's 16.
        self.output_block = nn.Sequential(
            ConvUnit(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid()
        )

    def forward(self, mel: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        features = []
        x = video
        for block in self.face_encoder_blocks:
            x = block(x)
            features.append(x)

        # Decode from the audio vector; each stage's output is joined to the encoder's
        # features of the same size, deepest first.
        x = self.audio_encoder(mel)
        for block, skip in zip(self.face_decoder_blocks, reversed(features), strict=True):
            x = torch.cat((block(x), skip), dim=1)
        return self.output_block(x)


@dataclass(frozen=True)
class ParityReport:
    """How closely an exported ONNX file reproduces the PyTorch model."""

    max_abs_diff: float  # largest absolute output difference over every batch tried
    batch_sizes: tuple[int, ...]  # the batch sizes compared
    tolerance: float  # the largest difference accepted


def load_checkpoint(path: str | os.PathLike[str]) -> Wav2Lip96:
    """Our generator holding the weights of one of the authors' ``.pth`` checkpoints.

    The file may hold ``{"state_dict": {...}}`` (the authors' layout, keys prefixed with
    ``module.``) or a bare state dict. It is read with ``weights_only=True``: no code in it
    runs.

    Raises:
        InvalidFormatError: the file is not a PyTorch checkpoint, or its weights do not fit
            the Wav2Lip 96 generator (the message names the first keys or shapes that differ).
    """
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a checkpoint"
        raise InvalidFormatError(
            f"{path.name} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc

    model = Wav2Lip96()
    load_weights(model, _state_dict_of(data, path.name), source=path.name)
    return model.eval()


def load_weights(model: Wav2Lip96, state: dict[str, Any], source: str = "state dict") -> None:
    """Load a state dict into the model after checking every key and shape.

    Raises:
        InvalidFormatError: keys are missing or unexpected, or a tensor has the wrong shape.
    """
    state = {_strip_prefix(key): value for key, value in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        differences = "; ".join(filter(None, [_few("missing", missing), _few("unexpected", extra)]))
        raise InvalidFormatError(
            f"{source} does not hold Wav2Lip 96 generator weights: {differences}"
        )

    for key, tensor in expected.items():
        found = state[key]
        if not isinstance(found, torch.Tensor) or found.shape != tensor.shape:
            got = tuple(found.shape) if isinstance(found, torch.Tensor) else type(found).__name__
            raise InvalidFormatError(
                f"{source}: {key} has shape {got}, expected {tuple(tensor.shape)}"
            )

    model.load_state_dict(state, strict=True)


def export_onnx(model: nn.Module, out_path: str | os.PathLike[str], opset: int = 17) -> Path:
    """Export the generator to one ONNX file: inputs "mel", "video", output "face".

    The batch axis of every tensor is dynamic; the weights are stored inside the file.
    """
    out_path = Path(out_path)
    model = model.eval()
    mel, video = random_inputs(1)
    batch = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated; it needs no extra package,
        # where the dynamo exporter needs onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.from_numpy(mel), torch.from_numpy(video)),
            str(out_path),
            input_names=["mel", "video"],
            output_names=["face"],
            dynamic_axes={"mel": batch, "video": batch, "face": batch},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    logger.debug("exported %s (opset %d)", out_path, opset)
    return out_path


def check_parity(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    batch_sizes: tuple[int, ...] = (1, 4),
    tolerance: float = PARITY_TOLERANCE,
    seed: int = 0,
) -> ParityReport:
    """Run the model and its ONNX file (onnxruntime, CPU) on the same random inputs.

    Raises:
        InternalError: the outputs differ by more than ``tolerance`` (the export is wrong).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = model.eval()
    worst = 0.0
    for offset, size in enumerate(batch_sizes):
        mel, video = random_inputs(size, seed=seed + offset)
        with torch.no_grad():
            expected = model(torch.from_numpy(mel), torch.from_numpy(video)).numpy()
        (got,) = session.run(["face"], {"mel": mel, "video": video})
        worst = max(worst, float(np.max(np.abs(got - expected))))

    logger.info("torch-vs-ONNX max abs difference %.2e over batches %s", worst, batch_sizes)
    if not worst < tolerance:
        raise InternalError(
            f"the ONNX export of the generator differs from PyTorch by {worst:.3g} "
            f"(more than {tolerance:g}); the file was not installed"
        )
    return ParityReport(max_abs_diff=worst, batch_sizes=tuple(batch_sizes), tolerance=tolerance)


def convert_checkpoint(
    pth_path: str | os.PathLike[str], out_path: str | os.PathLike[str], opset: int = 17
) -> ParityReport:
    """Load a ``.pth`` checkpoint, export it to ``out_path`` and check the export's parity."""
    model = load_checkpoint(pth_path)
    export_onnx(model, out_path, opset=opset)
    return check_parity(model, out_path)


def random_inputs(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded float32 inputs in the contract's ranges: mel in [-4, 4], video in [0, 1]."""
    rng = np.random.default_rng(seed)
    mel = rng.uniform(-4.0, 4.0, (batch, *MEL_SHAPE)).astype(np.float32)
    video = rng.uniform(0.0, 1.0, (batch, *VIDEO_SHAPE)).astype(np.float32)
    return mel, video


def _state_dict_of(data: Any, source: str) -> dict[str, Any]:
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        return data["state_dict"]
    if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return data
    raise InvalidFormatError(
        f"{source} holds no state dict (expected {{'state_dict': {{...}}}} or a bare one)"
    )


def _strip_prefix(key: str) -> str:
    return key[len(_CHECKPOINT_PREFIX) :] if key.startswith(_CHECKPOINT_PREFIX) else key


def _few(label: str, keys: list[str], shown: int = 3) -> str:
    if not keys:
        return ""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{label} {', '.join(keys[:shown])}{more}"


__all__ = [
    "PARITY_TOLERANCE",
    "ConvUnit",
    "ParityReport",
    "Wav2Lip96",
    "check_parity",
    "convert_checkpoint",
    "export_onnx",
    "load_checkpoint",
    "load_weights",
    "random_inputs",
]
