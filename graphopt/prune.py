"""Weight pruning of a model: choose the layers, split the sparsity budget over them, collect
calibration statistics on onnxruntime when the method needs them, and run the prune passes.

``prune(model, 0.5, ...)`` is what ``graphopt optimize --prune 0.5`` calls::

    result = prune("digits_cnn.onnx", 0.5, method="obs", calibration="digits_calib.npz")
    graphopt.save_model(result.model, "digits_cnn.pruned.onnx")
    for layer in result.layers:
        print(layer.name, layer.sparsity_after, layer.shape_after)

Methods: ``magnitude`` (|w|), ``wanda`` (|w|·‖x‖, Sun et al. 2023) and ``obs`` (layer-wise
optimal brain surgeon with weight reconstruction, SparseGPT, Frantar & Alistarh 2023); the last two
need ``calibration`` (anything :func:`~graphopt.calibration.calibration_data` takes). Patterns:
``unstructured``, ``2:4`` (N:M along the reduction dimension) and ``channel`` (output channels removed,
magnitude only). ``scope="global"`` spends one budget over all selected layers by |w| (``normalize``:
per-layer RMS-normalised |w|) and then prunes each layer to its share with the chosen method.
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

from graphopt import model_io
from graphopt.calibration import DEFAULT_BATCH_SIZE, Progress, calibration_data, run_batches
from graphopt.errors import InputSpecError, PassError
from graphopt.passes import PassContext, PassManager, PipelineResult
from graphopt.passes.cleanup import cleanup_passes
from graphopt.passes.pipeline import compose_provenance
from graphopt.passes.prune import (
    DEFAULT_EXCLUDE, SCOPES, ChannelPruning, Layer, MagnitudePruning, OBSPruning, WandaPruning, allocate_sparsity,
    parse_pattern, prunable_layers, selected_layers,
)
from graphopt.passes.prune.obs import DEFAULT_DAMPING

PATTERNS = ("unstructured", "2:4", "channel")
METHODS = ("magnitude", "wanda", "obs")
CALIBRATED_METHODS = ("wanda", "obs")


@dataclasses.dataclass
class LayerPruning:
    """One weight before and after pruning."""
    name: str  # the weight's tensor name (kept by pruning)
    op: str
    shape_before: tuple[int, ...]
    shape_after: tuple[int, ...]
    zeros_before: int
    zeros_after: int

    @property
    def sparsity_after(self) -> float:
        return self.zeros_after / max(1, int(np.prod(self.shape_after)))

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"sparsity_after": round(self.sparsity_after, 4)}


@dataclasses.dataclass
class PruneResult(PipelineResult):
    pattern: str = "unstructured"
    method: str = "magnitude"
    layers: list[LayerPruning] = dataclasses.field(default_factory=list)
    # tensors whose shape changed (channel pruning): name -> (old shape, new shape)
    reshaped: dict[str, tuple[tuple, tuple]] = dataclasses.field(default_factory=dict)
    calibration_samples: int = 0
    calibration_seconds: float = 0.0

    @property
    def notes(self) -> list[str]:
        return [note for report in self.reports for note in report.notes]

    @property
    def sparsity(self) -> float:
        """Zeros over weights of the layers pruning touched, after pruning."""
        total = sum(int(np.prod(layer.shape_after)) for layer in self.layers)
        return sum(layer.zeros_after for layer in self.layers) / max(1, total)


def prune(model: onnx.ModelProto | str | os.PathLike, sparsity: float | dict[str, float], *, scope: str = "layer",
          pattern: str = "unstructured", method: str = "magnitude", calibration=None, exclude=DEFAULT_EXCLUDE,
          normalize: bool = False, norm: str = "l2", damping: float = DEFAULT_DAMPING,
          batch_size: int = DEFAULT_BATCH_SIZE, dims: dict[str, int] | None = None, threads: int = 1,
          progress: Progress | None = None, cleanup: bool = True) -> PruneResult:
    """Prune ``model`` (see the module docstring).

    ``sparsity``: the fraction of weights (``channel``: of output channels) to remove, or a dict
    weight name -> fraction (e.g. :func:`graphopt.sensitivity.run_sensitivity`'s recommendation),
    which then names the layers and ignores ``scope`` and ``exclude``. ``2:4`` fixes the ratio at 50%.
    ``exclude``: node names, weight names, op types, ``first``, ``last``, ``tiny`` (the default
    leaves the first, the last and layers under 1024 weights dense). ``norm``: channel score, l1 or l2.
    ``progress(samples_done, samples_total_or_None)`` is called after each calibration batch.
    """
    if not isinstance(model, onnx.ModelProto):
        model = model_io.load_model(model)
    n_m = _check_options(sparsity, scope, pattern, method, calibration)
    ctx = PassContext(dims=dict(dims or {}))
    prepared = PassManager(cleanup_passes(ctx) if cleanup else [], ctx).apply(model)
    graph = model_io.to_graph(prepared.model)
    targets = _targets(graph, sparsity, scope, exclude, normalize, pattern)
    samples, seconds = 0, 0.0
    if pattern == "channel":
        prune_pass = ChannelPruning(targets, norm)
    elif method == "magnitude":
        prune_pass = MagnitudePruning(targets, n_m)
    else:
        layers = [layer for layer in prunable_layers(graph) if layer.name in targets]
        data = calibration_data(calibration, prepared.model, batch_size=batch_size, dims=ctx.dims)
        start = time.perf_counter()
        hessians, samples = layer_hessians(prepared.model, layers, data, diagonal=method == "wanda",
                                           threads=threads, progress=progress)
        seconds = time.perf_counter() - start
        if method == "wanda":
            prune_pass = WandaPruning(targets, {name: np.sqrt(h) for name, h in hessians.items()}, n_m)
        else:
            prune_pass = OBSPruning(targets, hessians, n_m, damping)
    pruned = PassManager([prune_pass], ctx).apply(prepared.model)
    onnx.checker.check_model(pruned.model)
    return PruneResult(pruned.model, prepared.reports + pruned.reports,
                       compose_provenance(prepared.provenance, pruned.provenance),
                       pattern=pattern, method=method, layers=_layer_changes(prepared.model, pruned.model, targets),
                       reshaped=dict(getattr(prune_pass, "reshaped", {})),
                       calibration_samples=samples, calibration_seconds=seconds)


def _check_options(sparsity, scope: str, pattern: str, method: str, calibration) -> tuple[int, int] | None:
    if scope not in SCOPES:
        raise PassError(f"prune: unknown scope '{scope}'", f"choose one of {', '.join(SCOPES)}")
    if pattern not in PATTERNS:
        raise PassError(f"prune: unknown pattern '{pattern}'", f"choose one of {', '.join(PATTERNS)}")
    if method not in METHODS:
        raise PassError(f"prune: unknown method '{method}'", f"choose one of {', '.join(METHODS)}")
    ratios = sparsity.values() if isinstance(sparsity, dict) else [sparsity]
    if not all(0 <= float(r) < 1 for r in ratios):
        raise PassError(f"prune: sparsity {sparsity} is not in [0, 1)", "e.g. --prune 0.5 removes half the weights")
    if pattern == "channel" and (method != "magnitude" or scope != "layer"):
        raise PassError("prune: channel pruning ranks channels by weight norm, per channel group",
                        "use --prune-method magnitude --prune-scope layer with --prune-pattern channel")
    if method in CALIBRATED_METHODS and calibration is None:
        raise InputSpecError(f"prune: method '{method}' needs calibration data",
                             "give --calibration DATA (.npz, module:function), or use --prune-method magnitude")
    return None if pattern == "channel" else parse_pattern(pattern)


def _targets(graph, sparsity, scope: str, exclude, normalize: bool, pattern: str) -> dict[str, float]:
    if isinstance(sparsity, dict):
        known = {layer.name for layer in prunable_layers(graph)}
        unknown = sorted(set(sparsity) - known)
        if unknown:
            raise PassError(f"prune: no prunable layer with weight {', '.join(unknown)}",
                            f"prunable weights: {', '.join(sorted(known))}")
        return {name: float(ratio) for name, ratio in sparsity.items()}
    layers = selected_layers(graph, exclude)
    if pattern == "2:4":
        return {layer.name: 0.5 for layer in layers}
    return allocate_sparsity(layers, float(sparsity), scope, normalize)


def layer_hessians(model: onnx.ModelProto, layers: list[Layer], data, *, diagonal: bool = False, threads: int = 1,
                   progress: Progress | None = None) -> tuple[dict[str, np.ndarray], int]:
    """``Σ x xᵀ`` over the calibration data of each layer's input columns (im2col for a Conv), as
    [group, K, K] per weight name, or only its diagonal [group, K] (``diagonal``); and the sample count.

    Sums, not means: the OBS damping is relative to diag(H), and Wanda compares within a layer.
    """
    inputs = {layer.name: layer.node.inputs[0].name for layer in layers}
    sums: dict[str, np.ndarray] = {}
    samples = 0
    for values in run_batches(model, list(dict.fromkeys(inputs.values())), data, threads=threads, progress=progress):
        samples += len(next(iter(values.values())))
        for layer in layers:
            columns = layer.columns(values[inputs[layer.name]])  # [positions, group, K]
            if diagonal:
                update = np.einsum("pgk,pgk->gk", columns, columns)
            else:
                update = np.einsum("pgk,pgl->gkl", columns, columns, optimize=True)
            sums[layer.name] = sums.get(layer.name, 0) + update
    return sums, samples


def _layer_changes(before: onnx.ModelProto, after: onnx.ModelProto, targets: dict[str, float]) -> list[LayerPruning]:
    old = {t.name: t for t in before.graph.initializer}
    new = {t.name: t for t in after.graph.initializer}
    changes = []
    for name in targets:
        if name not in old or name not in new:
            continue
        a, b = onnx.numpy_helper.to_array(old[name]), onnx.numpy_helper.to_array(new[name])
        op = next((n.op_type for n in after.graph.node if len(n.input) > 1 and n.input[1] == name), "")
        changes.append(LayerPruning(name, op, a.shape, b.shape, int((a == 0).sum()), int((b == 0).sum())))
    return changes


def render_pruning(result: PruneResult, console: Console) -> None:
    """One row per pruned weight: shape before -> after and sparsity; then the pass notes."""
    if result.pattern == "channel":
        before = sum(int(np.prod(layer.shape_before)) for layer in result.layers)
        after = sum(int(np.prod(layer.shape_after)) for layer in result.layers)
        summary = f"the pruned layers keep {after:,} of {before:,} weights"
    else:
        summary = f"{result.sparsity:.1%} of the pruned layers' weights are zero"
    table = Table(title=f"pruning: {result.pattern}, {result.method} ({summary})", title_justify="left")
    for column in ("weight", "op", "shape", "zeros before", "sparsity after"):
        table.add_column(column, justify="left" if column in ("weight", "op", "shape") else "right")
    for layer in result.layers:
        shape = "×".join(map(str, layer.shape_before))
        if layer.shape_after != layer.shape_before:
            shape += " → " + "×".join(map(str, layer.shape_after))
        table.add_row(layer.name, layer.op, shape, f"{layer.zeros_before:,}", f"{layer.sparsity_after:.1%}")
    console.print(table)
    if result.calibration_samples:
        console.print(f"calibration: {result.calibration_samples} samples, {result.calibration_seconds:.2f} s")
    for note in result.notes:
        console.print(f"  {note}", markup=False)


def prune_result_json(result: PruneResult) -> dict:
    return {"pattern": result.pattern, "method": result.method, "sparsity": round(result.sparsity, 4),
            "layers": [layer.to_json() for layer in result.layers],
            "reshaped": {name: [list(old), list(new)] for name, (old, new) in result.reshaped.items()},
            "calibration_samples": result.calibration_samples,
            "calibration_seconds": round(result.calibration_seconds, 3), "notes": result.notes}
