"""Running onnxruntime sessions: a plain ``run`` on the CPU, I/O binding on a GPU.

With the CUDA or TensorRT provider first, a plain ``session.run`` stages every input and
output through host buffers that onnxruntime allocates per call. Bound instead, the inputs
are copied to the device once into values we hand over, and the outputs are allocated by
the provider on the device and copied back in one step, so the generator and the face
models move each batch across the bus once each way. The CPU path needs none of that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Providers whose kernels run on an NVIDIA GPU, and the onnxruntime device name for them.
GPU_DEVICES = {"TensorrtExecutionProvider": "cuda", "CUDAExecutionProvider": "cuda"}


def session_device(session: Any) -> str:
    """Where a session's first (preferred) provider runs: ``"cuda"`` or ``"cpu"``."""
    providers = session.get_providers()
    return GPU_DEVICES.get(providers[0], "cpu") if providers else "cpu"


def run_session(
    session: Any,
    outputs: list[str] | None,
    feeds: dict[str, np.ndarray],
    *,
    bind: bool | None = None,
) -> list[np.ndarray]:
    """The session's ``outputs`` (None: all of them, in order) for ``feeds``, as arrays.

    Args:
        session: an ``onnxruntime.InferenceSession``.
        outputs: output names to return.
        feeds: input name to array.
        bind: use I/O binding; default: when the session runs on a GPU. Binding on the CPU
            gives the same answer (the tests check the bound path that way).
    """
    device = session_device(session)
    if not (device != "cpu" if bind is None else bind):
        return session.run(outputs, feeds)

    import onnxruntime as ort

    binding = session.io_binding()
    # The device copies are held here until the run ends: the binding only points at them.
    values = {
        name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0)
        for name, array in feeds.items()
    }
    for name, value in values.items():
        binding.bind_ortvalue_input(name, value)
    for name in outputs or [output.name for output in session.get_outputs()]:
        binding.bind_output(name, device)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()
