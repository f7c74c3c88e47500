"""Compiled int8 and fp32 kernels (built from ``kernels/`` as ``graphopt.kernels``).

This package imports nothing from the rest of graphopt (DESIGN.md): the runtime depends on it,
never the other way round. Each compiled routine has a slow, obviously-correct numpy reference in
``graphopt.kernels.reference`` and tests compare the two.
"""
from graphopt.kernels._packing import VNNI_K_GROUP, VNNI_N_PANEL, pack_weights_vnni
from graphopt.kernels._qgemm import (PackedWeights, PreparedGemm, UnsupportedISAError, isa,
                                     pack_weights, qgemm, requantize_accumulators,
                                     supported_isas)
from graphopt.kernels.conv import PackedConvWeights, PreparedConv, pack_conv_weights, qconv2d
# fp32: packed AVX-512 FMA GEMM and implicit-GEMM 2-D convolution (sgemm.c); the fp32 path has its
# own ISA choice (graphopt.kernels._sgemm.isa / supported_isas: "avx512", "generic").
from graphopt.kernels._sgemm import Conv2d, Gemm, PackedB, PackedConv, conv2d, sgemm

__all__ = ["VNNI_K_GROUP", "VNNI_N_PANEL", "PackedConvWeights", "PackedWeights",
           "PreparedConv", "PreparedGemm", "UnsupportedISAError", "isa", "pack_conv_weights", "pack_weights", "pack_weights_vnni",
           "qconv2d", "qgemm", "requantize_accumulators", "supported_isas",
           "Conv2d", "Gemm", "PackedB", "PackedConv", "conv2d", "sgemm"]
