"""``graphopt demo``: the whole job on the bundled ``digits-cnn`` and its labelled test set.

inspect → optimize (cleanup, fusion, static int8 calibrated on ``digits_calib.npz``; and a second
variant pruned to 50% with obs, then int8) → compare
fp32 and int8 on onnxruntime and graphopt (accuracy on ``digits_test.npz``, per-layer SQNR through
the quantizer's provenance, latency) → the table and a single-file HTML report.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

DEMO_RUNS = 50
# obs keeps digits-cnn's accuracy at this sparsity without retraining (bench/results/prune.md).
DEMO_SPARSITY = 0.5
DEMO_WARMUP = 5


def run_demo(workdir: Path, console: Console, *, runs: int = DEMO_RUNS, threads: tuple[int, ...] = (1,),
             report: bool = True) -> bool:
    """Run the demo (see the module docstring), writing into ``workdir``; return whether the
    fp32 rewrite verified."""
    from graphopt.compare import Variant, compare, load_dataset, render_comparison
    from graphopt.inspect import inspect_model, render_text
    from graphopt.model_io import load_model, save_model
    from graphopt.models import DIGITS_CALIB, DIGITS_ONNX, DIGITS_TEST
    from graphopt.optimize import optimize_model, render_quantization, render_result, run_quantization
    from graphopt.prune import prune, render_pruning

    workdir.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = workdir / "digits_cnn.opt.onnx", workdir / "digits_cnn.int8.onnx"
    pruned_path = workdir / "digits_cnn.pruned.int8.onnx"
    console.rule(f"graphopt inspect {DIGITS_ONNX.name}")
    original = load_model(DIGITS_ONNX)
    render_text(inspect_model(original, dims={"batch": 1}) | {"model": DIGITS_ONNX.name}, console)
    console.rule(f"graphopt optimize {DIGITS_ONNX.name} --quantize int8 --calibration {DIGITS_CALIB.name}")
    result = optimize_model(original, dims={"batch": 1})
    render_result(result, console)
    if not result.ok:
        return False
    quantized = run_quantization(result.model, "int8", str(DIGITS_CALIB), console, dims={}, seed=0)
    render_quantization(quantized, console)
    save_model(result.model, fp32_path)
    save_model(quantized.result.model, int8_path)
    console.rule(f"graphopt optimize {DIGITS_ONNX.name} --prune {DEMO_SPARSITY} --prune-method obs "
                 f"--quantize int8 --calibration {DIGITS_CALIB.name}")
    pruned = prune(result.model, DEMO_SPARSITY, method="obs", calibration=str(DIGITS_CALIB), cleanup=False)
    render_pruning(pruned, console)
    pruned_quantized = run_quantization(pruned.model, "int8", str(DIGITS_CALIB), None, dims={}, seed=0)
    save_model(pruned_quantized.result.model, pruned_path)
    console.rule(f"graphopt compare {DIGITS_ONNX.name} {int8_path.name} {pruned_path.name} "
                 f"--data {DIGITS_TEST.name} --per-layer")
    variants = [Variant("fp32", DIGITS_ONNX), Variant("int8", int8_path, _pairs(result, quantized)),
                Variant(f"pruned {DEMO_SPARSITY:.0%} + int8", pruned_path, _pairs(result, pruned_quantized))]
    dataset = load_dataset(DIGITS_TEST, original)
    comparison = compare(variants, dataset, threads=threads, runs=runs, warmup=DEMO_WARMUP, per_layer=True)
    render_comparison(comparison, console)
    if report:
        _write_report(comparison.to_json(), workdir / "report.html", console)
    return True


def _pairs(result, quantized) -> dict[str, str]:
    """int8 tensor → fp32-optimized tensor → original tensor: the pairs per-layer SQNR needs
    (pruning keeps tensor names, so a pruned model pairs the same way)."""
    return {name: result.provenance.get(fp32, [fp32])[-1] for name, fp32 in quantized.result.quantized_tensors.items()}


def _write_report(report: dict, path: Path, console: Console) -> None:
    from graphopt.errors import GraphoptError
    from graphopt.report import write_report

    try:
        write_report(report, path)
    except GraphoptError as exc:  # matplotlib is an extra: the demo's tables do not need it
        console.print(f"report not written: {exc}")
        return
    console.print(f"wrote {path}")
