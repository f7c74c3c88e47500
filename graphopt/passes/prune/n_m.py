"""N:M semi-structured sparsity (2:4): in every group of M consecutive weights along the reduction
dimension, at least N are zero. For a Conv the groups run over input channels at one kernel
position (see :mod:`graphopt.passes.prune.layers`)."""
from __future__ import annotations

import numpy as np

from graphopt.passes.prune.layers import Layer


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"2:4"`` -> (2, 4); ``"unstructured"`` -> None."""
    if pattern == "unstructured":
        return None
    n, sep, m = pattern.partition(":")
    if not sep or not n.isdigit() or not m.isdigit() or not 0 < int(n) < int(m):
        raise ValueError(f"unknown sparsity pattern '{pattern}'")
    return int(n), int(m)


def fits_n_m(layer: Layer, m: int) -> bool:
    """Whether every group of ``m`` columns lies inside one kernel position (Conv: Cin/group % m == 0)."""
    w_shape = np.asarray(layer.weight.values).shape
    reduction = w_shape[1] if layer.node.op == "Conv" else layer.matrix().shape[1]
    return reduction % m == 0


def n_m_mask(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """True on the ``n`` lowest-scoring weights of every group of ``m`` consecutive columns."""
    rows, columns = scores.shape
    groups = scores.reshape(rows, columns // m, m)
    mask = np.zeros(groups.shape, bool)
    np.put_along_axis(mask, np.argsort(groups, axis=2, kind="stable")[:, :, :n], True, axis=2)
    return mask.reshape(rows, columns)


def is_n_m_sparse(matrix: np.ndarray, n: int, m: int) -> bool:
    """Every group of ``m`` consecutive columns of ``matrix`` holds at least ``n`` zeros."""
    rows, columns = matrix.shape
    return columns % m == 0 and bool(((matrix.reshape(rows, -1, m) == 0).sum(axis=2) >= n).all())
