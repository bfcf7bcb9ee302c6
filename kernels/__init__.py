"""Numba kernels for the renderer: the warp field and the masked blend.

Imported as ``lipsync.kernels``; the folder lives at the top of the repository so that the
compiled hot paths sit apart from the pipeline code that calls them.
"""

from .blend import blend_masked
from .warp import displacement_field, seam_split_maps

__all__ = ["blend_masked", "displacement_field", "seam_split_maps"]
