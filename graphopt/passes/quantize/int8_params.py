"""Quantization parameters of the U8S8 format (DESIGN.md, "Quantized format").

Activations: uint8 (or int8) asymmetric per tensor, the range always containing 0 so that zero
(padding, ReLU) is exact. Weights: int8 symmetric in [-127, 127], per output channel or per
tensor. Bias: int32 with scale ``s_x * s_w`` and zero point 0, so the integer accumulator adds it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

ACTIVATION_TYPES = {"u8": (np.uint8, 0, 255), "s8": (np.int8, -128, 127)}
WEIGHT_MAX = 127
INT32_MAX = np.iinfo(np.int32).max
# Smallest step for a constant-zero tensor: any positive scale reproduces it exactly.
MIN_SCALE = 1e-8


@dataclasses.dataclass(frozen=True)
class ActivationParams:
    scale: float
    zero_point: int
    dtype: type

    def quantize(self, values: np.ndarray) -> np.ndarray:
        info = np.iinfo(self.dtype)
        return np.clip(np.rint(values / self.scale) + self.zero_point, info.min, info.max).astype(self.dtype)


def activation_params(low: float, high: float, activation_type: str = "u8") -> ActivationParams:
    """Asymmetric parameters for the range ``[low, high]`` widened to contain 0."""
    dtype, qmin, qmax = ACTIVATION_TYPES[activation_type]
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = max((high - low) / (qmax - qmin), MIN_SCALE)
    zero_point = int(np.clip(round(qmin - low / scale), qmin, qmax))
    return ActivationParams(np.float32(scale).item(), zero_point, dtype)


def weight_scales(weight: np.ndarray, axis: int | None) -> np.ndarray:
    """Symmetric int8 scales: one per slice along ``axis``, or one scalar for ``axis=None``."""
    magnitude = np.abs(weight.astype(np.float64))
    if axis is None:
        peak = np.asarray(magnitude.max() if magnitude.size else 0.0)
    else:
        peak = np.moveaxis(magnitude, axis, 0).reshape(weight.shape[axis], -1).max(axis=1)
    # An all-zero channel quantizes to zeros under any scale; 1 keeps the bias scale s_x * s_w usable.
    return np.where(peak > 0, peak / WEIGHT_MAX, 1.0).astype(np.float32)


def quantize_weight(weight: np.ndarray, scales: np.ndarray, axis: int | None) -> np.ndarray:
    shape = [1] * weight.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.rint(weight / scales.reshape(shape) if axis is not None else weight / scales)
    return np.clip(q, -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)


def bias_overflow_scales(bias: np.ndarray, input_scale: float, scales: np.ndarray) -> np.ndarray:
    """Weight scales raised just enough that ``bias / (s_x * s_w)`` fits int32 (unchanged if it does)."""
    needed = np.abs(bias.astype(np.float64)) / (input_scale * INT32_MAX)
    if scales.ndim == 0:  # per tensor: one scale must fit every element of the bias
        needed = needed.max(initial=0.0)
    return np.maximum(scales.astype(np.float64), needed * (1 + 1e-6)).astype(np.float32)


def quantize_bias(bias: np.ndarray, input_scale: float, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int32 bias, its scales ``s_x * s_w``). The caller has checked for overflow."""
    bias_scales = (np.float64(input_scale) * scales.astype(np.float64)).astype(np.float32)
    q = np.rint(bias.astype(np.float64) / bias_scales.astype(np.float64))
    return np.clip(q, -INT32_MAX, INT32_MAX).astype(np.int32), bias_scales
