"""Builds the pass pipeline from user options, runs it, and renders what it did."""
from __future__ import annotations

import dataclasses
import math
import warnings

import onnx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from graphopt.errors import PassError
from graphopt.passes import DEFAULT_FOLD_LIMIT_BYTES, PassContext, PassManager, PipelineResult
from graphopt.passes.cleanup import cleanup_passes
from graphopt.passes.fusion import fusion_passes


def build_pipeline(ctx: PassContext, skip: tuple[str, ...] | list[str] = (), fuse: bool = True) -> list:
    passes = cleanup_passes(ctx) + (fusion_passes(ctx) if fuse else [])
    known = {p.name for p in passes}
    unknown = sorted(set(skip) - known)
    if unknown:
        raise PassError(f"--skip {', '.join(unknown)}: no such pass", f"passes: {', '.join(sorted(known))}")
    return [p for p in passes if p.name not in skip]


def optimize_model(model: onnx.ModelProto, *, opset: int | None = None, dims: dict[str, int] | None = None,
                   skip: tuple[str, ...] | list[str] = (), fold_limit_bytes: int = DEFAULT_FOLD_LIMIT_BYTES,
                   verify: bool = True, rtol: float = 1e-5, seed: int = 0, fuse: bool = True) -> PipelineResult:
    """Run the default pipeline (cleanup, then fusion unless ``fuse`` is false) on ``model``;
    with ``verify``, check the result on onnxruntime."""
    ctx = PassContext(target_opset=opset, dims=dict(dims or {}), fold_limit_bytes=fold_limit_bytes, seed=seed)
    result = PassManager(build_pipeline(ctx, skip, fuse), ctx).run(model, check=verify, rtol=rtol)
    # Intermediate shapes written into the file change which fusions onnxruntime applies, not
    # always for the better (bert-mini: 1.11x slower with them, bench/results/fusion.md);
    # onnxruntime and Netron infer them anyway.
    del result.model.graph.value_info[:]
    return result


def _print_passes(result: PipelineResult, title: str, console: Console) -> None:
    """A row per pass that changed something; the others on one line below."""
    table = Table(title=title, title_justify="left")
    for column in ("pass", "nodes", "rewrites", "ms"):
        table.add_column(column, justify="right" if column in ("nodes", "ms") else "left")
    idle = []
    for r in result.reports:
        if not r.changed and not r.notes:
            idle.append(r.name)
            continue
        rewrites = ", ".join(f"{rule} ×{n}" for rule, n in r.rewrites.most_common()) or "-"
        if r.notes:
            rewrites += "".join(f"\n[dim]{note}[/dim]" for note in r.notes)
        table.add_row(r.name, f"{r.nodes_before} → {r.nodes_after}", rewrites, f"{r.seconds * 1e3:.0f}")
    if table.rows:
        console.print(table)
    else:
        console.print(f"{title}: no changes")
    idle = [name for name in dict.fromkeys(idle) if name not in {r.name for r in result.reports if r.changed}]
    if idle:
        console.print("[dim]found nothing to do: " + ", ".join(idle) + "[/dim]")


def render_result(result: PipelineResult, console: Console) -> None:
    _print_passes(result, "passes", console)
    v = result.verification
    if v is None:
        console.print("verification: skipped (--no-verify)")
        return
    table = Table(title="verification on onnxruntime", title_justify="left")
    for column in ("output", "shape", "max abs", "max rel", "cosine", "ok"):
        table.add_column(column, justify="left" if column in ("output", "ok") else "right")
    for o in v.outputs:
        status = "[green]yes[/green]" if o.ok else f"[red]NO[/red] {o.problem}"
        table.add_row(o.name, "×".join(map(str, o.shape)), f"{o.max_abs:.3g}", f"{o.max_rel:.3g}",
                      f"{o.cosine:.6f}", status)
    console.print(table)
    console.print("[dim]seeded inputs (seed " + str(v.seed) + "): "
                  + ", ".join(f"{k}{shape}" for k, shape in v.input_shapes.items())
                  + f"; ok = max rel ≤ {v.rtol:g}[/dim]")


@dataclasses.dataclass
class Quantization:
    """A quantized model and the error of its tensors against the fp32 model it came from."""
    result: object  # graphopt.quantize.QuantizeResult
    layers: list  # graphopt.quantize.LayerError, outputs included
    output_names: list[str]
    warnings: list[str]


def run_quantization(fp32: onnx.ModelProto, mode: str, calibration, console: Console | None, *,
                     dims: dict[str, int], seed: int, **options) -> Quantization:
    """Quantize the (already cleaned and fused) ``fp32`` model and measure each quantized tensor.

    ``mode`` is ``int8`` (static QDQ) or ``dynamic``. The error is measured on the calibration
    data, or for dynamic quantization without any, on seeded sample inputs.
    """
    from graphopt.calibration import calibration_data
    from graphopt.feeds import make_feeds
    from graphopt.quantize import layer_errors, quantize

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _calibration_progress(console) as progress:
            result = quantize(fp32, calibration, mode="static" if mode == "int8" else "dynamic", dims=dims,
                              progress=progress, cleanup=False, **options)
        data = (calibration_data(calibration, fp32, batch_size=options.get("batch_size", 32), dims=dims, seed=seed)
                if calibration else [make_feeds(fp32, dims, seed)])
        layers = layer_errors(fp32, result, data)
    return Quantization(result, layers, [o.name for o in result.model.graph.output],
                        [str(w.message) for w in caught if issubclass(w.category, UserWarning)])


class _calibration_progress:
    """A progress bar on ``console`` while calibration runs (nothing when console is None)."""

    def __init__(self, console: Console | None):
        self.bar = None if console is None else Progress(
            TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TextColumn("samples"),
            TimeElapsedColumn(), console=console, transient=True)
        self.task = None

    def __enter__(self):
        if self.bar is None:
            return None
        self.bar.start()
        self.task = self.bar.add_task("calibrate", total=None)
        return self.update

    def update(self, done: int, total: int | None) -> None:
        self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


# Below this SQNR a quantized tensor is flagged: about 3 significant bits of signal left.
LOW_SQNR_DB = 20.0
WORST_LAYERS_SHOWN = 5


def render_quantization(q: Quantization, console: Console, *, all_layers: bool = False) -> None:
    for message in q.warnings:
        console.print(f"[yellow]warning:[/yellow] {message}")
    r = q.result
    title = f"quantization ({r.mode}" + (f", {r.calibration_samples} calibration samples" if r.calibration_samples
                                         else "") + ")"
    _print_passes(r, title, console)
    outputs = [layer for layer in q.layers if layer.name in q.output_names]
    inner = sorted((layer for layer in q.layers if layer.name not in q.output_names), key=lambda x: x.sqnr_db)
    shown = inner if all_layers else inner[:WORST_LAYERS_SHOWN]
    label = "every quantized tensor" if all_layers else f"{len(shown)} worst of {len(inner)} quantized tensors"
    table = Table(title=f"int8 vs fp32: outputs and {label} (--report-layers for all)", title_justify="left")
    for column in ("tensor", "stands for", "SQNR dB", "cosine", "max abs"):
        table.add_column(column, justify="left" if column in ("tensor", "stands for") else "right")
    for layer in outputs + shown:
        sqnr = "inf" if math.isinf(layer.sqnr_db) else f"{layer.sqnr_db:.1f}"
        if layer.sqnr_db < LOW_SQNR_DB:
            sqnr = f"[red]{sqnr}[/red]"
        name = f"[bold]{layer.name}[/bold]" if layer in outputs else layer.name
        table.add_row(name, layer.original, sqnr, f"{layer.cosine:.5f}", f"{layer.max_abs:.3g}")
    console.print(table)


def quantize_result_json(q: Quantization) -> dict:
    r = q.result
    return {
        "mode": r.mode,
        "calibration_samples": r.calibration_samples,
        "passes": [report.to_json() for report in r.reports],
        "warnings": q.warnings,
        "outputs": [layer.to_json() for layer in q.layers if layer.name in q.output_names],
        "layers": [layer.to_json() for layer in q.layers if layer.name not in q.output_names],
    }
