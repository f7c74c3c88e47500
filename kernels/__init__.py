"""Compiled int8 kernels (built from ``kernels/`` as ``graphopt.kernels``).

This package imports nothing from the rest of graphopt (DESIGN.md): the runtime depends on it,
never the other way round. Each compiled routine has a slow, obviously-correct numpy reference in
``graphopt.kernels.reference`` and tests compare the two.
"""
from graphopt.kernels._packing import VNNI_K_GROUP, VNNI_N_PANEL, pack_weights_vnni

__all__ = ["VNNI_K_GROUP", "VNNI_N_PANEL", "pack_weights_vnni"]
