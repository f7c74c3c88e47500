"""OBS pruning, SparseGPT-style (Frantar & Alistarh 2023): prune a layer and update its remaining
weights so that its output on the calibration data changes least."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.passes.pipeline import PassContext, PassReport
from graphopt.passes.prune.layers import Layer, prunable_layers
from graphopt.passes.prune.n_m import fits_n_m

# Columns processed together: the update of the columns after a block is one matrix product.
BLOCK_COLUMNS = 128
DEFAULT_DAMPING = 0.01


class OBSPruning:
    """Layer-wise optimal brain surgeon: with ``H = X Xᵀ + λ·mean(diag H)·I`` from the layer's
    calibration inputs X (im2col columns for a Conv), each row w of the reduction matrix is
    pruned column by column; zeroing ``w_j`` costs ``w_j² / [H⁻¹]_jj`` and the error
    ``(w_j - 0) / [H⁻¹]_jj`` is spread over the columns not yet visited through the Cholesky factor
    of H⁻¹, which minimises ‖WX − ŴX‖² for the chosen mask.

    Rules:
      1. unstructured: per block of BLOCK_COLUMNS columns, the ``targets[name]`` fraction of the
         block's weights with the lowest cost (over all rows of the group) is zeroed.
      2. N:M: in each group of M columns, the N with the lowest cost in that row are zeroed.
      3. a grouped Conv uses one H per group (``hessians[name]`` is [group, K, K]) for its rows.
      4. a column whose input is always 0 (diag H = 0) gets its weights zeroed: they never count.
      5. the weight keeps its tensor name, shape and dtype.

    Must not fire:
      6. on a layer not in ``targets`` or without a Hessian (noted); N:M as MagnitudePruning rule 5.
    """

    name = "obs-pruning"

    def __init__(self, targets: dict[str, float], hessians: dict[str, np.ndarray],
                 n_m: tuple[int, int] | None = None, damping: float = DEFAULT_DAMPING):
        self.targets = dict(targets)
        self.hessians = hessians
        self.n_m = n_m
        self.damping = damping

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        for layer in prunable_layers(graph):
            self._try_prune(layer, report)
        return report

    def _try_prune(self, layer: Layer, report: PassReport) -> bool:
        target = self.targets.get(layer.name)
        if target is None or (target <= 0 and self.n_m is None):
            return False
        if layer.name not in self.hessians:
            report.notes.append(f"{layer.name}: no calibration statistics, left dense")
            return False
        if self.n_m is not None and not fits_n_m(layer, self.n_m[1]):
            report.notes.append(f"{layer.name}: reduction length not a multiple of {self.n_m[1]}, left dense")
            return False
        matrix = layer.matrix()
        hessians = self.hessians[layer.name]
        rows = matrix.shape[0] // hessians.shape[0]
        for g, h in enumerate(hessians):
            matrix[g * rows:(g + 1) * rows] = self.prune_rows(matrix[g * rows:(g + 1) * rows], h, target)
        layer.set_matrix(matrix)
        report.record(f"{self.n_m[0]}:{self.n_m[1]}" if self.n_m else "unstructured", layer.name, [layer.name])
        return True

    def prune_rows(self, w: np.ndarray, h: np.ndarray, sparsity: float) -> np.ndarray:
        """``w`` [rows, K] pruned and reconstructed against ``h`` [K, K] (see the class docstring)."""
        w, h = w.copy(), h.copy()
        dead = np.diag(h) == 0
        h[dead, dead] = 1.0
        w[:, dead] = 0.0
        h[np.diag_indices_from(h)] += self.damping * float(np.mean(np.diag(h)))
        hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor U with H⁻¹ = UᵀU
        columns = w.shape[1]
        for start in range(0, columns, BLOCK_COLUMNS):
            end = min(start + BLOCK_COLUMNS, columns)
            block, u = w[:, start:end], hinv[start:end, start:end]
            diag = np.diag(u)
            mask = self._block_mask(block, diag, sparsity)
            errors = np.zeros_like(block)
            for i in range(end - start):
                if self.n_m is not None and i % self.n_m[1] == 0:
                    n, m = self.n_m
                    cost = block[:, i:i + m] ** 2 / diag[i:i + m] ** 2
                    np.put_along_axis(mask[:, i:i + m], np.argsort(cost, axis=1, kind="stable")[:, :n], True, axis=1)
                pruned = np.where(mask[:, i], 0.0, block[:, i])
                error = (block[:, i] - pruned) / u[i, i]
                block[:, i:] -= np.outer(error, u[i, i:])
                block[:, i] = pruned
                errors[:, i] = error
            w[:, start:end] = block
            w[:, end:] -= errors @ hinv[start:end, end:]
        return w

    def _block_mask(self, block: np.ndarray, diag: np.ndarray, sparsity: float) -> np.ndarray:
        mask = np.zeros(block.shape, bool)
        if self.n_m is None:
            cost = (block ** 2 / diag ** 2).ravel()
            mask.ravel()[np.argsort(cost, kind="stable")[:int(round(sparsity * cost.size))]] = True
        return mask
