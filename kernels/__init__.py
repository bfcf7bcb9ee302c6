"""Numba kernels."""
X = 1
