"""Neural lip-sync models: the manifest, the installed-model registry and the ONNX contract.

No weights ship with lipsync. The manifest (``weights/models.toml``, installed as the package
data ``lipsync.weights``) names the models lipsync knows (``e2``, ``e3``) and the input
contract a model file must honour. A user imports their own ONNX file with
:func:`import_onnx`: its graph is checked against the contract, the file is copied into
:func:`models_home` and its SHA-256 is recorded in ``registry.json`` there, so a later
corruption is noticed (:func:`list_models`, :func:`require_model`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import tomllib
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import platformdirs

from .cache import atomic_target, file_digest, write_json_atomic
from .errors import (
    DataCorruptedError,
    InternalError,
    InvalidFormatError,
    InvalidOptionError,
    MissingDependencyError,
    ModelNotInstalledError,
)

logger = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"
DEFAULT_CONTRACT = "wav2lip96"
# Built-in generators that need no file; a user model may not take their names.
_BUILT_IN = {"e1"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# PyTorch checkpoints, converted by import_checkpoint rather than installed as they are.
_CHECKPOINT_SUFFIXES = (".pth", ".pt")


@dataclass(frozen=True)
class ModelContract:
    """What a model file takes and returns; every tensor is float32 with a dynamic batch axis."""

    crop_size: int  # side of the square face crop, px
    colour_order: str  # channel order of the crops ("BGR" for Wav2Lip)
    channels: int  # channels of the video input (6: masked target crop + reference crop)
    mel_bands: int  # mel filters per audio frame
    mel_steps: int  # audio frames per mel window
    mel_input: str  # name of the mel input, shaped (N, 1, mel_bands, mel_steps)
    video_input: str  # name of the crop input, shaped (N, channels, crop_size, crop_size)
    output: str  # name of the output, shaped (N, 3, crop_size, crop_size)
    mel_range: tuple[float, float]  # values the mel input holds
    video_range: tuple[float, float]  # values the crop input holds
    output_range: tuple[float, float]  # values the output holds

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each input's shape after the batch axis."""
        return {
            self.mel_input: (1, self.mel_bands, self.mel_steps),
            self.video_input: (self.channels, self.crop_size, self.crop_size),
        }

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each output's shape after the batch axis."""
        return {self.output: (3, self.crop_size, self.crop_size)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelContract:
        """A contract from its manifest table or registry record (lists become tuples)."""
        fields = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        missing = sorted(set(cls.__dataclass_fields__) - set(fields))
        if missing:
            raise DataCorruptedError(f"model contract lacks {', '.join(missing)}")
        for key in ("mel_range", "video_range", "output_range"):
            fields[key] = tuple(float(v) for v in fields[key])
        return cls(**fields)


@dataclass(frozen=True)
class ModelEntry:
    """A model the manifest names; its weights come from its authors, not from lipsync."""

    name: str  # the name a job asks for ("e2")
    title: str  # what the model is ("Wav2Lip 96")
    file: str  # file name it is installed under in models_home()
    sha256: str  # published SHA-256 of that file; "" = recorded at import
    checkpoint: str  # the authors' PyTorch checkpoint it is converted from
    homepage: str  # where the authors publish it
    source: str  # direct download URL; "" where none is known
    licence: str  # the terms its weights come with
    contract: ModelContract  # the tensors it takes and returns


@dataclass(frozen=True)
class ModelStatus:
    """One model as this installation sees it."""

    name: str  # the name a job asks for
    title: str  # what the model is
    licence: str  # the terms its weights come with ("" for a user model that gave none)
    installed: bool  # a file is recorded and present in models_home()
    verified: bool  # that file's SHA-256 matches the expected one
    path: Path | None  # where the file is, when installed
    sha256: str  # the expected SHA-256 ("" when nothing is recorded)
    origin: str  # "manifest" or "user"

    def to_dict(self) -> dict[str, Any]:
        """The status as plain JSON values."""
        data = asdict(self)
        data["path"] = None if self.path is None else str(self.path)
        return data


def models_home() -> Path:
    """Where models are installed: ``$LIPSYNC_HOME/models``, else the user's data directory."""
    home = os.environ.get("LIPSYNC_HOME")
    if home:
        return Path(home) / "models"
    return Path(platformdirs.user_data_dir("lipsync")) / "models"


@cache
def _manifest_text() -> str:
    return resources.files("lipsync.weights").joinpath("models.toml").read_text("utf-8")


def load_manifest() -> dict[str, ModelEntry]:
    """The models the manifest names, by name."""
    try:
        data = tomllib.loads(_manifest_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DataCorruptedError(f"the model manifest cannot be read: {exc}") from exc

    contracts = {
        key: ModelContract.from_dict(table) for key, table in data.get("contracts", {}).items()
    }
    entries = {}
    for name, table in data.get("models", {}).items():
        fields = {key: table.get(key, "") for key in ModelEntry.__dataclass_fields__}
        fields.update(name=name, contract=contracts[table["contract"]])
        entries[name] = ModelEntry(**fields)
    return entries


def load_contract(name: str = DEFAULT_CONTRACT) -> ModelContract:
    """A contract the manifest declares, by name."""
    data = tomllib.loads(_manifest_text())
    if name not in data.get("contracts", {}):
        known = ", ".join(sorted(data.get("contracts", {})))
        raise InvalidOptionError(f"unknown model contract {name!r}; known: {known}")
    return ModelContract.from_dict(data["contracts"][name])


def list_models() -> list[ModelStatus]:
    """The manifest's models, then the user's own, each with whether it is installed and intact.

    Verifying hashes every installed file (about a second per few hundred MB).
    """
    manifest = load_manifest()
    registry = _read_registry()
    user_names = sorted(set(registry) - set(manifest))
    names = [*manifest, *user_names]
    return [_status(name, manifest.get(name), registry.get(name)) for name in names]


def model_names() -> list[str]:
    """Every model name a job may ask for: the manifest's, then the user's own installed ones."""
    manifest = load_manifest()
    return [*manifest, *sorted(set(_read_registry()) - set(manifest))]


def model_contract(name: str) -> ModelContract:
    """The contract a model's file honours: the manifest's, else the one recorded at import.

    Raises:
        InvalidOptionError: no model of that name is in the manifest or installed.
    """
    entry = load_manifest().get(name)
    if entry is not None:
        return entry.contract
    record = _read_registry().get(name)
    if record is None:
        raise InvalidOptionError(f"no model named {name!r} is known or installed")
    return ModelContract.from_dict(record.get("contract") or {})


def require_model(name: str) -> ModelStatus:
    """The status of an installed, verified model; raises when it is missing or corrupt.

    Raises:
        ModelNotInstalledError: no file is installed under that name (the hint says how).
        DataCorruptedError: the installed file no longer matches its recorded SHA-256.
    """
    manifest = load_manifest()
    status = _status(name, manifest.get(name), _read_registry().get(name))
    if not status.installed:
        where = f"{status.title}, " if status.title else ""
        raise ModelNotInstalledError(
            f"model {name!r} ({where}{status.licence or 'weights not shipped'}) is not installed",
            hint=f"import its ONNX file or the authors' .pth checkpoint: "
            f"python -m lipsync models import PATH --name {name}",
        )
    if not status.verified:
        raise DataCorruptedError(
            f"the installed file for model {name!r} ({status.path}) does not match the "
            f"SHA-256 recorded for it; import the model again"
        )
    return status


def import_onnx(
    path: str | os.PathLike[str],
    name: str | None = None,
    contract: ModelContract | str | None = None,
) -> ModelStatus:
    """Check an ONNX file against a contract, install a copy and record its SHA-256.

    A PyTorch checkpoint (``.pth``, ``.pt``) is handed to :func:`import_checkpoint`.

    Args:
        path: the ``.onnx`` file; it is only read, never changed.
        name: the name jobs will ask for. Default: the manifest model whose file name
            matches, else the file's stem.
        contract: a :class:`ModelContract` or a contract name from the manifest. Default:
            the manifest model's own contract, else ``wav2lip96``.

    Returns:
        The installed model's status (installed and verified).

    Raises:
        InvalidOptionError: no such file, or an unusable name.
        InvalidFormatError: not an ONNX model, or one that breaks the contract (the message
            names the tensor, what it has and what was expected).
    """
    source = Path(path)
    if not source.is_file():
        raise InvalidOptionError(f"no model file at {source}")
    if source.suffix.lower() in _CHECKPOINT_SUFFIXES:
        return import_checkpoint(source, name=name, contract=contract)
    if source.suffix.lower() != ".onnx":
        raise InvalidFormatError(
            f"{source.name}: expected an .onnx file or a PyTorch checkpoint "
            f"({', '.join(_CHECKPOINT_SUFFIXES)}), got {source.suffix!r}"
        )

    manifest = load_manifest()
    name = name or _default_name(source, manifest)
    return _install(source, name, contract, imported_from=source)


def import_checkpoint(
    path: str | os.PathLike[str],
    name: str | None = None,
    contract: ModelContract | str | None = None,
) -> ModelStatus:
    """Convert one of the authors' Wav2Lip 96 checkpoints to ONNX, verify it and install it.

    The weights are loaded into lipsync's own implementation of the generator, exported to
    ONNX in a temporary folder, compared with PyTorch on random inputs (largest difference
    below 1e-4, onnxruntime CPU) and then installed as :func:`import_onnx` installs a file.
    Needs torch (``pip install 'lipsync[convert]'``).

    Args:
        path: the ``.pth`` checkpoint (``{"state_dict": ...}`` as the authors save it, or a
            bare state dict); it is read with ``weights_only``, so no code in it runs.
        name: the name jobs will ask for. Default: the manifest model whose checkpoint file
            name matches (``wav2lip.pth`` is ``e2``, ``wav2lip_gan.pth`` is ``e3``), else the
            file's stem.
        contract: as for :func:`import_onnx`; the converted file must honour it.

    Raises:
        MissingDependencyError: torch is not installed.
        InvalidOptionError: no such file, or an unusable name.
        InvalidFormatError: not a checkpoint, or its weights do not fit the generator.
        InternalError: the export does not reproduce the PyTorch output.
    """
    source = Path(path)
    if not source.is_file():
        raise InvalidOptionError(f"no checkpoint file at {source}")
    manifest = load_manifest()
    name = name or _default_name(source, manifest)
    _check_name(name)

    from .convert.wav2lip import convert_checkpoint  # imports torch

    with tempfile.TemporaryDirectory(prefix="lipsync-convert-") as folder:
        converted = Path(folder) / f"{name}.onnx"
        report = convert_checkpoint(source, converted)
        logger.info(
            "converted %s: torch-vs-ONNX max abs difference %.2e", source, report.max_abs_diff
        )
        return _install(converted, name, contract, imported_from=source)


def _install(
    source: Path, name: str, contract: ModelContract | str | None, *, imported_from: Path
) -> ModelStatus:
    """Check an ONNX file against its contract, copy it into models_home() and record it."""
    manifest = load_manifest()
    entry = manifest.get(name)
    _check_name(name)
    if contract is None:
        contract = entry.contract if entry is not None else DEFAULT_CONTRACT
    if isinstance(contract, str):
        contract = load_contract(contract)

    check_onnx(source, contract)
    digest = file_digest(source)
    if entry is not None and entry.sha256 and digest != entry.sha256:
        raise InvalidFormatError(
            f"{source.name} is not the published file for {name!r}: SHA-256 {digest}, "
            f"expected {entry.sha256}"
        )

    # Copy first, then record: a reader never finds a record for a half-written file.
    home = models_home()
    home.mkdir(parents=True, exist_ok=True)
    file_name = entry.file if entry is not None else f"{name}.onnx"
    _copy_atomic(source, home / file_name)
    if file_digest(home / file_name) != digest:
        raise InternalError(f"the copy of {source} in {home} does not match the original")

    record = {
        "file": file_name,
        "sha256": digest,
        "imported_from": str(imported_from.resolve()),
        "contract": asdict(contract),
    }
    registry = _read_registry()
    registry[name] = record
    _write_registry(registry)
    logger.info("installed model %s from %s (sha256 %s)", name, imported_from, digest[:12])
    return _status(name, entry, record)


def check_onnx(path: str | os.PathLike[str], contract: ModelContract) -> None:
    """Check an ONNX file's inputs and outputs against a contract; raise when they differ.

    Every tensor must be float32, carry the contract's name and shape, and have a dynamic
    first (batch) axis. Extra outputs are allowed; extra inputs are not (nothing would feed
    them). The weights must be inside the file, not in external data files.

    Raises:
        InvalidFormatError: the file is not a valid ONNX model or breaks the contract.
    """
    onnx = _onnx()
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises protobuf DecodeError, ValidationError, and more
        raise InvalidFormatError(f"{path.name} is not a valid ONNX model: {exc}") from exc

    graph = model.graph
    if any(_is_external(tensor) for tensor in graph.initializer):
        raise InvalidFormatError(
            f"{path.name} keeps its weights in external data files; save it as one file"
        )

    # Older exporters list initializers among the inputs; those are weights, not inputs.
    weights = {tensor.name for tensor in graph.initializer}
    inputs = {value.name: value for value in graph.input if value.name not in weights}
    outputs = {value.name: value for value in graph.output}
    _check_tensors(path.name, "input", inputs, contract.input_shapes(), exact=True)
    _check_tensors(path.name, "output", outputs, contract.output_shapes(), exact=False)


def _check_tensors(
    file_name: str,
    kind: str,
    found: dict[str, Any],
    expected: dict[str, tuple[int, ...]],
    *,
    exact: bool,
) -> None:
    onnx = _onnx()
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected)) if exact else []
    if missing or extra:
        raise InvalidFormatError(
            f"{file_name}: {kind}s {sorted(found)} do not match the contract: expected "
            f"{sorted(expected)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
        )

    for tensor_name, tail in expected.items():
        tensor_type = found[tensor_name].type.tensor_type
        want = "(N, " + ", ".join(str(d) for d in tail) + ")"
        if tensor_type.elem_type != onnx.TensorProto.FLOAT:
            got = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
            raise InvalidFormatError(
                f"{file_name}: {kind} {tensor_name!r} holds {got}, expected FLOAT (float32)"
            )

        dims = [_dim(d) for d in tensor_type.shape.dim] if tensor_type.HasField("shape") else []
        got = "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
        if len(dims) != len(tail) + 1 or list(dims[1:]) != list(tail):
            raise InvalidFormatError(
                f"{file_name}: {kind} {tensor_name!r} has shape {got}, expected {want}"
            )
        if dims[0] is not None:
            raise InvalidFormatError(
                f"{file_name}: {kind} {tensor_name!r} has a fixed batch of {dims[0]} {got}; "
                f"expected a dynamic batch axis {want} (export with dynamic_axes on axis 0)"
            )


def _dim(dim: Any) -> int | None:
    """A fixed axis length, or None for a symbolic or unset one."""
    return dim.dim_value if dim.HasField("dim_value") else None


def _is_external(tensor: Any) -> bool:
    onnx = _onnx()
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _status(name: str, entry: ModelEntry | None, record: dict[str, Any] | None) -> ModelStatus:
    """Whether a model is installed and intact; a published hash wins over a recorded one."""
    expected = (entry.sha256 if entry is not None else "") or (record or {}).get("sha256", "")
    path = models_home() / record["file"] if record else None
    installed = path is not None and path.is_file()
    verified = installed and bool(expected) and file_digest(path) == expected
    if installed and not verified:
        logger.warning("model %s: %s does not match its recorded SHA-256", name, path)
    return ModelStatus(
        name=name,
        title=entry.title if entry is not None else "",
        licence=entry.licence if entry is not None else "",
        installed=installed,
        verified=verified,
        path=path if installed else None,
        sha256=expected,
        origin="manifest" if entry is not None else "user",
    )


def _default_name(source: Path, manifest: dict[str, ModelEntry]) -> str:
    for entry in manifest.values():
        if source.name in (entry.file, entry.checkpoint):
            return entry.name
    return source.stem


def _check_name(name: str) -> None:
    if name in _BUILT_IN:
        raise InvalidOptionError(f"{name!r} is a built-in generator; choose another name")
    if not _NAME.fullmatch(name):
        raise InvalidOptionError(
            f"model name {name!r}: use up to 64 letters, digits, '.', '_' or '-'"
        )


def _copy_atomic(source: Path, target: Path) -> None:
    with atomic_target(target) as tmp:
        shutil.copyfile(source, tmp)


def _read_registry() -> dict[str, dict[str, Any]]:
    """The installed models' records; an absent registry means nothing is installed."""
    path = models_home() / REGISTRY_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return dict(data["models"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataCorruptedError(
            f"the model registry {path} cannot be read ({exc}); delete it and import again"
        ) from exc


def _write_registry(models: dict[str, dict[str, Any]]) -> None:
    document = {"version": 1, "models": models}
    write_json_atomic(models_home() / REGISTRY_FILE, document, indent=2, sort_keys=True)


def _onnx():
    """The onnx package, imported on first use (it is large and only needed here)."""
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError(
            "checking model files needs the onnx package", hint="pip install onnx"
        ) from exc
    return onnx


__all__ = [
    "DEFAULT_CONTRACT",
    "ModelContract",
    "ModelEntry",
    "ModelStatus",
    "check_onnx",
    "import_checkpoint",
    "import_onnx",
    "list_models",
    "load_contract",
    "load_manifest",
    "models_home",
    "require_model",
]
