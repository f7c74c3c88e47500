"""Wanda pruning (Sun et al. 2023): magnitude weighted by the norm of the input it multiplies."""
from __future__ import annotations

import numpy as np

from graphopt.passes.prune.layers import Layer
from graphopt.passes.prune.magnitude import MagnitudePruning


class WandaPruning(MagnitudePruning):
    """Magnitude pruning with score ``|W[o, j]| · ‖X_j‖``, ``‖X_j‖`` the L2 norm of reduction
    column j of the layer's input over the calibration data (for a Conv, of its im2col columns),
    compared within each output row, as the paper does. Rules as MagnitudePruning, and:

      6. ``norms[name]`` is [group, reduction] (one row of norms per Conv group); a layer without
         norms is pruned by plain magnitude, and noted.
      7. a column whose input is always 0 scores 0: its weights go first.
    """

    name = "wanda-pruning"
    per_row = True

    def __init__(self, targets: dict[str, float], norms: dict[str, np.ndarray], n_m: tuple[int, int] | None = None):
        super().__init__(targets, n_m)
        self.norms = norms

    def scores(self, layer: Layer, matrix: np.ndarray) -> np.ndarray:
        norms = self.norms.get(layer.name)
        if norms is None:
            return np.abs(matrix)
        rows_per_group = matrix.shape[0] // norms.shape[0]
        return np.abs(matrix) * np.repeat(norms, rows_per_group, axis=0)
