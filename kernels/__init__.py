"""Compiled int8 kernels (built from ``kernels/`` as ``graphopt.kernels``).

This package imports nothing from the rest of graphopt (DESIGN.md): the runtime depends on it,
never the other way round. Each compiled routine has a slow, obviously-correct numpy reference in
``graphopt.kernels.reference`` and tests compare the two.
"""
from graphopt.kernels._packing import VNNI_K_GROUP, VNNI_N_PANEL, pack_weights_vnni
from graphopt.kernels._qgemm import (PackedWeights, PreparedGemm, UnsupportedISAError, isa,
                                     pack_weights, qgemm, requantize_accumulators,
                                     supported_isas)
from graphopt.kernels.conv import PackedConvWeights, pack_conv_weights, qconv2d

__all__ = ["VNNI_K_GROUP", "VNNI_N_PANEL", "PackedConvWeights", "PackedWeights",
           "PreparedGemm", "UnsupportedISAError", "isa", "pack_conv_weights", "pack_weights", "pack_weights_vnni",
           "qconv2d", "qgemm", "requantize_accumulators", "supported_isas"]
