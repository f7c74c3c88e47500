"""Unstructured sparsity: which individual weights to zero, and how a global budget splits over layers."""
from __future__ import annotations

import numpy as np

from graphopt.passes.prune.layers import Layer

SCOPES = ("layer", "global")


def unstructured_mask(scores: np.ndarray, sparsity: float, *, per_row: bool = False) -> np.ndarray:
    """True where a weight is zeroed: the ``sparsity`` fraction with the lowest scores, over the
    whole matrix or (``per_row``) within each row. Exact counts, ties broken by position."""
    if per_row:
        k = int(round(sparsity * scores.shape[1]))
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
        mask = np.zeros(scores.shape, bool)
        np.put_along_axis(mask, order, True, axis=1)
        return mask
    k = int(round(sparsity * scores.size))
    mask = np.zeros(scores.size, bool)
    mask[np.argsort(scores, axis=None, kind="stable")[:k]] = True
    return mask.reshape(scores.shape)


def allocate_sparsity(layers: list[Layer], sparsity: float, scope: str = "layer",
                      normalize: bool = False) -> dict[str, float]:
    """Sparsity per layer (by weight name). ``layer``: every layer gets ``sparsity``. ``global``:
    the ``sparsity`` fraction of all their weights with the smallest |w| is zeroed, wherever it lies;
    with ``normalize`` each layer's |w| is first divided by its RMS, so that a layer whose weights
    are small as a whole (a wide layer) is not emptied before the others."""
    if scope == "layer":
        return {layer.name: sparsity for layer in layers}
    magnitudes = []
    for layer in layers:
        w = np.abs(layer.matrix()).ravel()
        if normalize:
            w = w / max(float(np.sqrt(np.mean(w * w))), np.finfo(np.float64).tiny)
        magnitudes.append(w)
    owner = np.concatenate([np.full(w.size, i) for i, w in enumerate(magnitudes)])
    k = int(round(sparsity * owner.size))
    zeroed = owner[np.argsort(np.concatenate(magnitudes), kind="stable")[:k]]
    counts = np.bincount(zeroed, minlength=len(layers))
    return {layer.name: counts[i] / magnitudes[i].size for i, layer in enumerate(layers)}
