"""Magnitude pruning: zero the weights with the smallest |w|."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.passes.pipeline import PassContext, PassReport
from graphopt.passes.prune.layers import Layer, prunable_layers
from graphopt.passes.prune.n_m import fits_n_m, n_m_mask
from graphopt.passes.prune.unstructured import unstructured_mask


class MagnitudePruning:
    """Zeroes the lowest-scoring weights of the layers named in ``targets`` (weight name ->
    sparsity, see ``unstructured.allocate_sparsity``); the score here is |w|.

    Rules:
      1. unstructured (``n_m`` None): the ``targets[name]`` fraction of the layer's weights with the
         lowest scores becomes 0 (exactly that many; weights already 0 count).
      2. N:M (``n_m=(2, 4)``): in every group of 4 consecutive weights along the reduction
         dimension the 2 lowest-scoring become 0; the target ratio is not used.
      3. the weight keeps its tensor name, shape and dtype: only values change.

    Must not fire:
      4. on a layer not in ``targets``, or with target 0.
      5. N:M on a layer whose reduction length per kernel position is not a multiple of M (a
         Conv with Cin/group = 3): a group would straddle kernel positions. Noted in the report.
    """

    name = "magnitude-pruning"
    per_row = False

    def __init__(self, targets: dict[str, float], n_m: tuple[int, int] | None = None):
        self.targets = dict(targets)
        self.n_m = n_m

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        for layer in prunable_layers(graph):
            self._try_prune(layer, report)
        return report

    def scores(self, layer: Layer, matrix: np.ndarray) -> np.ndarray:
        return np.abs(matrix)

    def _try_prune(self, layer: Layer, report: PassReport) -> bool:
        target = self.targets.get(layer.name, 0.0)
        if target <= 0 and self.n_m is None or layer.name not in self.targets:
            return False
        if self.n_m is not None and not fits_n_m(layer, self.n_m[1]):
            report.notes.append(f"{layer.name}: reduction length not a multiple of {self.n_m[1]}, left dense")
            return False
        matrix = layer.matrix()
        scores = self.scores(layer, matrix)
        mask = n_m_mask(scores, *self.n_m) if self.n_m else unstructured_mask(scores, target, per_row=self.per_row)
        matrix[mask] = 0.0
        layer.set_matrix(matrix)
        report.record(f"{self.n_m[0]}:{self.n_m[1]}" if self.n_m else "unstructured", layer.name, [layer.name])
        return True
