"""Pruning sensitivity: top-1 accuracy with one layer pruned at a time, at several sparsity levels,
and the per-layer ratios that each keep the drop within a budget.

``run_sensitivity`` is what ``graphopt sensitivity MODEL --data test.npz --labels label`` calls::

    data = run_sensitivity("digits_cnn.onnx", "digits_test.npz", "label", max_drop=1.0)
    render_sensitivity(data, Console())
    result = prune("digits_cnn.onnx", data.recommended)   # the recommended ratios, all at once

Each layer is measured alone, and the drops of several pruned layers add up: the recommendation
starts from each layer's highest level within the budget and, while all of them together lose more
than the budget, lowers by one level the layer whose own drop there is largest (per weight saved).
``combined_accuracy`` is the measured top-1 of the final recommendation.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

from graphopt import model_io
from graphopt.calibration import DEFAULT_BATCH_SIZE, calibration_data
from graphopt.errors import InputSpecError
from graphopt.feeds import input_specs, read_npz
from graphopt.oracle import ort_session
from graphopt.passes import PassContext, PassManager
from graphopt.passes.cleanup import cleanup_passes
from graphopt.passes.prune import prunable_layers
from graphopt.prune import prune

DEFAULT_LEVELS = (0.3, 0.5, 0.7, 0.9)
DEFAULT_MAX_DROP = 1.0


@dataclasses.dataclass
class LayerSensitivity:
    name: str  # weight tensor name
    op: str
    params: int
    accuracy: dict[float, float]  # sparsity -> top-1 % with only this layer pruned
    recommended: float  # the level recommended with all layers pruned together (0.0: leave dense)


@dataclasses.dataclass
class Sensitivity:
    baseline: float  # top-1 % of the unpruned model
    levels: tuple[float, ...]
    max_drop: float
    method: str
    samples: int
    layers: list[LayerSensitivity]
    combined_accuracy: float | None  # every layer at its recommended ratio together
    plot: Path | None = None

    @property
    def recommended(self) -> dict[str, float]:
        """Weight name -> ratio, for the layers worth pruning (``prune(model, data.recommended)``)."""
        return {layer.name: layer.recommended for layer in self.layers if layer.recommended > 0}

    def to_json(self) -> dict:
        return {"baseline": self.baseline, "levels": list(self.levels), "max_drop": self.max_drop,
                "method": self.method, "samples": self.samples, "combined_accuracy": self.combined_accuracy,
                "recommended": self.recommended, "plot": str(self.plot) if self.plot else None,
                "layers": [dataclasses.asdict(layer) | {"accuracy": {str(k): v for k, v in layer.accuracy.items()}}
                           for layer in self.layers]}


def run_sensitivity(model: onnx.ModelProto | str | os.PathLike, data, labels, *, levels=DEFAULT_LEVELS,
                    max_drop: float = DEFAULT_MAX_DROP, method: str = "magnitude", calibration=None,
                    batch_size: int = DEFAULT_BATCH_SIZE, plot: str | os.PathLike | None = None,
                    threads: int = 1) -> Sensitivity:
    """Accuracy per prunable layer and level (see the module docstring).

    ``data``: an .npz or a dict of arrays, one per model input (extra arrays are ignored);
    ``labels``: the name of an array in ``data``, an .npy file, or an array of class indices,
    compared with the argmax of the model's first output. ``method``/``calibration`` as in
    :func:`~graphopt.prune.prune`. ``plot``: a PNG path, written only if matplotlib is installed.
    """
    if not isinstance(model, onnx.ModelProto):
        model = model_io.load_model(model)
    model = PassManager(cleanup_passes(PassContext())).apply(model).model
    feeds, truth = _labelled_data(model, data, labels)
    batches = calibration_data(feeds, model, batch_size=batch_size)
    baseline = top1(model, batches, truth, threads)
    levels = tuple(sorted(float(level) for level in levels))
    layers = []
    for layer in prunable_layers(model_io.to_graph(model)):
        accuracy = {level: top1(prune(model, {layer.name: level}, method=method, calibration=calibration,
                                      cleanup=False).model, batches, truth, threads) for level in levels}
        within = [level for level in levels if baseline - accuracy[level] <= max_drop]
        layers.append(LayerSensitivity(layer.name, layer.node.op, int(np.asarray(layer.weight.values).size),
                                       accuracy, max(within, default=0.0)))
    result = Sensitivity(baseline, levels, max_drop, method, len(truth), layers, None)
    while result.recommended:
        combined = prune(model, result.recommended, method=method, calibration=calibration, cleanup=False)
        result.combined_accuracy = top1(combined.model, batches, truth, threads)
        if baseline - result.combined_accuracy <= max_drop:
            break
        _back_off(result)
    if plot is not None:
        result.plot = plot_sensitivity(result, plot)
    return result


def _back_off(data: Sensitivity) -> None:
    """Lower by one level the pruned layer that loses most accuracy per weight it saves."""
    def cost(layer: LayerSensitivity) -> float:
        return (data.baseline - layer.accuracy[layer.recommended] + 1e-3) / (layer.recommended * layer.params)
    worst = max((layer for layer in data.layers if layer.recommended > 0), key=cost)
    lower = [level for level in data.levels if level < worst.recommended]
    worst.recommended = lower[-1] if lower else 0.0


def _labelled_data(model: onnx.ModelProto, data, labels) -> tuple[dict[str, np.ndarray], np.ndarray]:
    arrays = read_npz(data, "--data") if isinstance(data, (str, os.PathLike)) else dict(data)
    if isinstance(labels, str) and labels in arrays:
        truth = arrays[labels]
    elif isinstance(labels, (str, os.PathLike)):
        if not Path(labels).is_file():
            raise InputSpecError(f"labels '{labels}': not an array in the data nor a file",
                                 f"arrays in the data: {', '.join(arrays)}")
        try:
            truth = np.load(labels, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputSpecError(f"labels {labels}: not a readable .npy file ({exc})",
                                 "save one class index per sample with numpy.save") from exc
    else:
        truth = np.asarray(labels)
    wanted = [spec.name for spec in input_specs(model)]
    missing = [name for name in wanted if name not in arrays]
    if missing:
        raise InputSpecError(f"--data has no array for input(s) {', '.join(missing)}",
                             f"its arrays: {', '.join(arrays)}; the model's inputs: {', '.join(wanted)}")
    feeds = {name: arrays[name] for name in wanted}
    count = len(next(iter(feeds.values()))) if feeds else 0
    if truth.ndim != 1 or len(truth) != count:
        raise InputSpecError(f"labels have shape {list(truth.shape)}, the data has {count} samples",
                             "one class index per sample")
    return feeds, truth.astype(np.int64)


def top1(model: onnx.ModelProto, batches, truth: np.ndarray, threads: int = 1) -> float:
    """Top-1 accuracy in % of the model's first output over ``batches``, in order, against ``truth``."""
    session = ort_session(model, threads=threads, optimize=True)
    name = session.get_outputs()[0].name
    predictions = np.concatenate([session.run([name], feeds)[0].reshape(len(next(iter(feeds.values()))), -1)
                                  .argmax(axis=1) for feeds in batches])
    return float((predictions == truth[:len(predictions)]).mean() * 100)


def render_sensitivity(data: Sensitivity, console: Console) -> None:
    """A rich table: one row per layer, accuracy per level (drops beyond the budget in red)."""
    table = Table(title=f"pruning sensitivity ({data.method}, one layer at a time; baseline "
                        f"{data.baseline:.2f}% on {data.samples} samples; budget {data.max_drop:g} points)",
                  title_justify="left")
    table.add_column("layer (weight)")
    table.add_column("op")
    table.add_column("params", justify="right")
    for level in data.levels:
        table.add_column(f"{level:.0%}", justify="right")
    table.add_column("recommended", justify="right")
    for layer in data.layers:
        cells = []
        for level in data.levels:
            accuracy = layer.accuracy[level]
            style = "red" if data.baseline - accuracy > data.max_drop else "green"
            cells.append(f"[{style}]{accuracy:.2f}[/{style}]")
        table.add_row(layer.name, layer.op, f"{layer.params:,}", *cells, f"{layer.recommended:.0%}")
    console.print(table)
    if data.combined_accuracy is not None:
        console.print(f"all recommended ratios together: {data.combined_accuracy:.2f}% "
                      f"({data.combined_accuracy - data.baseline:+.2f} points)")
    if data.plot is not None:
        console.print(f"plot: {data.plot}")


def plot_sensitivity(data: Sensitivity, path: str | os.PathLike) -> Path | None:
    """Accuracy vs sparsity, one line per layer, as a PNG; None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return None
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for layer in data.layers:
        axes.plot([100 * lv for lv in data.levels], [layer.accuracy[lv] for lv in data.levels], marker="o",
                  label=layer.name)
    axes.axhline(data.baseline - data.max_drop, color="grey", linestyle="--", label="budget")
    axes.set_xlabel("sparsity of the layer (%)")
    axes.set_ylabel("top-1 (%)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return Path(path)
