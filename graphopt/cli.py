"""The ``graphopt`` command line.

Every command reports user errors (:class:`GraphoptError`) as one line on stderr and exits with
status 2; ``--debug`` (before or after the command name) shows the traceback instead.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console

import graphopt
from graphopt.errors import GraphoptError

EXIT_USER_ERROR = 2
EXIT_VERIFICATION_FAILED = 1
EXIT_INTERNAL_ERROR = 3

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class _Cli(click.Group):
    """A click group that turns GraphoptErrors into one line and exit status 2."""

    def main(self, args=None, **kwargs):
        args = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in args
        args = [a for a in args if a != "--debug"]
        try:
            return super().main(args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            err.print("graphopt: aborted")
            sys.exit(EXIT_USER_ERROR)
        except click.ClickException as exc:
            exc.show()
            sys.exit(EXIT_USER_ERROR)
        except GraphoptError as exc:
            if debug:
                raise
            err.print(f"graphopt: error: {exc}", markup=False, soft_wrap=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            err.print("graphopt: interrupted")
            sys.exit(130)
        except Exception as exc:  # a bug in graphopt, not the user's fault: still one line
            if debug:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            err.print(f"graphopt: internal error: {type(exc).__name__}: {first} "
                      "(rerun with --debug for the traceback and report it)", markup=False, soft_wrap=True)
            sys.exit(EXIT_INTERNAL_ERROR)


def _dims_option(f):
    return click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE",
                        help="Value of a symbolic input dim, e.g. --dim batch=1 (repeatable).")(f)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(graphopt.__version__, "--version", prog_name="graphopt")
def cli():
    """graphopt: make an ONNX model smaller and faster, and prove it still computes the same thing.

    Add --debug to any command to see the full traceback of an error.
    """


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@_dims_option
@click.option("--nodes", is_flag=True, help="Per-node table: shapes, params, MACs, sparsity, int8.")
@click.option("--top", type=click.IntRange(min=1), metavar="N", help="The N heaviest nodes by MACs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--no-check", is_flag=True, help="Skip the ONNX checker.")
def inspect(model, dims, nodes, top, as_json, no_check):
    """Summarise MODEL: ops, shapes, parameters, MACs, sparsity, quantization.

    Example: graphopt inspect model.onnx --dim batch=1 --top 10
    """
    from graphopt.feeds import check_dims, parse_dims
    from graphopt.inspect import inspect_model, render_text

    loaded = graphopt.load_model(model, check=not no_check)
    dims = parse_dims(dims)
    check_dims(loaded, dims)
    report = inspect_model(loaded, dims=dims, nodes=nodes, top=top)
    report = {"model": str(model)} | report
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        render_text(report, out)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where to write the optimized model.")
@click.option("--in-place", is_flag=True, help="Overwrite MODEL itself (only after verification passed).")
@click.option("--opset", type=click.IntRange(min=7), help="Upgrade the default-domain opset to this version.")
@_dims_option
@click.option("--skip", multiple=True, metavar="PASS", help="Leave out a pass by name (repeatable).")
@click.option("--fold-limit-mb", type=click.FloatRange(min=0), default=64.0, show_default=True,
              help="Largest tensor constant folding may create.")
@click.option("--fuse/--no-fuse", default=True, show_default=True,
              help="Run the fusion passes after cleanup (BatchNorm/bias/scale folding, Gelu, LayerNorm, ...).")
@click.option("--prune", "prune_ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True), metavar="RATIO",
              help="Fraction of weights (with --prune-pattern channel: of output channels) to remove; runs "
                   "before --quantize.")
@click.option("--prune-scope", type=click.Choice(["layer", "global"]), default="layer", show_default=True,
              help="The same ratio in every layer, or one magnitude threshold over all layers.")
@click.option("--prune-normalize", is_flag=True, help="With --prune-scope global: compare |w| divided by each "
              "layer's RMS.")
@click.option("--prune-pattern", type=click.Choice(["unstructured", "2:4", "channel"]), default="unstructured",
              show_default=True, help="Which weights go: any, 2 of every 4 along the reduction, or whole output "
              "channels (the layers shrink).")
@click.option("--prune-method", type=click.Choice(["magnitude", "wanda", "obs"]), default="magnitude",
              show_default=True, help="wanda and obs use --calibration data (obs also updates the kept weights).")
@click.option("--prune-all-layers", is_flag=True, help="Also prune the first, last and tiny (<1024 weights) layers.")
@click.option("--quantize", "quantize_mode", type=click.Choice(["int8", "dynamic"]),
              help="int8: static QDQ (U8S8, per-channel weights) calibrated on --calibration; "
                   "dynamic: int8 MatMul/Gemm weights, activations quantized at run time.")
@click.option("--calibration", metavar="DATA",
              help="Calibration inputs: FILE.npz (one array per input, samples on axis 0), module:function "
                   "or file.py:function returning feed dicts, or 'random' (only for trying things out).")
@click.option("--method", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True, help="How activation ranges are chosen from calibration data.")
@click.option("--percentile", type=click.FloatRange(50, 100), default=99.99, show_default=True,
              help="With --method percentile: the share of values kept inside the range.")
@click.option("--per-tensor", is_flag=True, help="One weight scale per tensor instead of per output channel.")
@click.option("--activation-type", type=click.Choice(["u8", "s8"]), default="u8", show_default=True,
              help="Activation integer type (u8 is the fast one on x86 onnxruntime).")
@click.option("--exclude", multiple=True, metavar="NODE_OR_OP", help="Keep a node, or every node of an op type, "
              "in fp32 (repeatable).")
@click.option("--keep-fp32", metavar="LIST", default="", help="Comma list of node names, 'first' or 'last' "
              "(the first/last quantizable layer) to keep in fp32.")
@click.option("--calibration-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Samples per calibration run.")
@click.option("--report-layers", is_flag=True, help="With --quantize: SQNR of every quantized tensor, not only "
              "the outputs.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check the fp32 rewrite against MODEL on onnxruntime with seeded inputs.")
@click.option("--rtol", type=float, default=1e-5, show_default=True,
              help="Largest error allowed, relative to each output's largest magnitude.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the verification inputs.")
@click.option("--external-data/--no-external-data", default=None,
              help="Store weights in OUTPUT.data (default: only when the model exceeds 2 GiB).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def optimize(model, output, in_place, opset, dims, skip, fold_limit_mb, fuse, prune_ratio, prune_scope,
             prune_normalize, prune_pattern, prune_method, prune_all_layers, quantize_mode, calibration, method,
             percentile, per_tensor, activation_type, exclude, keep_fp32, calibration_batch, report_layers, verify,
             rtol, seed, external_data, as_json):
    """Rewrite MODEL with graph passes, verify the result and write it to OUTPUT.

    Runs the cleanup passes: shape inference, no-op removal, constant folding, initializer
    de-duplication, dead-code removal (and an opset upgrade with --opset); then, unless
    --no-fuse, the fusion passes: BatchNormalization, bias and scale folded into Conv/Gemm,
    MatMul+Add to Gemm, Gelu, LayerNormalization, HardSigmoid/HardSwish, Transpose and Reshape
    chains collapsed (attention and SiLU are recognised and reported). Nothing is written if
    verification fails; the first pass that broke the model is named and the exit status is 1.
    With --prune, weights are then pruned (magnitude, or calibrated wanda/obs; unstructured, 2:4
    or whole channels). With --quantize, the result is then quantized and the error of each output
    (and with --report-layers each quantized tensor) against fp32 is reported as SQNR and cosine.

    Example: graphopt optimize model.onnx -o model.int8.onnx --quantize int8 --calibration calib.npz
    """
    from graphopt.feeds import check_dims, parse_dims
    from graphopt.optimize import optimize_model, quantize_result_json, render_quantization, render_result, \
        run_quantization

    if in_place == (output is not None):
        raise GraphoptError("give either -o OUTPUT or --in-place", "e.g. graphopt optimize m.onnx -o m.opt.onnx")
    if quantize_mode == "int8" and not calibration:
        raise GraphoptError("--quantize int8 needs --calibration DATA",
                            "pass an .npz of sample inputs, or --calibration random to try it out")
    calibrated_prune = prune_ratio is not None and prune_method in ("wanda", "obs")
    if calibration and not (quantize_mode or calibrated_prune):
        raise GraphoptError("--calibration is only used with --quantize or --prune-method wanda|obs",
                            "add --quantize int8")
    if calibrated_prune and not calibration:
        raise GraphoptError(f"--prune-method {prune_method} needs --calibration DATA",
                            "pass an .npz of sample inputs, or use --prune-method magnitude")
    target = model if in_place else output
    loaded = graphopt.load_model(model)
    dims = parse_dims(dims)
    check_dims(loaded, dims)
    result = optimize_model(loaded, opset=opset, dims=dims, skip=skip,
                            fold_limit_bytes=int(fold_limit_mb * (1 << 20)), verify=verify, rtol=rtol, seed=seed,
                            fuse=fuse)
    pruned = quantized = None
    fp32 = result.model
    if result.ok and prune_ratio is not None:
        from graphopt.prune import DEFAULT_EXCLUDE, prune

        pruned = prune(fp32, prune_ratio, scope=prune_scope, pattern=prune_pattern, method=prune_method,
                       calibration=calibration, normalize=prune_normalize, dims=dims, batch_size=calibration_batch,
                       exclude=(() if prune_all_layers else DEFAULT_EXCLUDE) + tuple(exclude), cleanup=False)
        fp32 = pruned.model
    if result.ok and quantize_mode:
        quantized = run_quantization(
            fp32, quantize_mode, calibration, err if not as_json else None, method=method,
            percentile=percentile, per_channel=not per_tensor, activation_type=activation_type, exclude=exclude,
            keep_fp32=[k for k in keep_fp32.split(",") if k], batch_size=calibration_batch, dims=dims, seed=seed)
    final = quantized.result.model if quantized else fp32
    if result.ok:
        graphopt.save_model(final, target, external_data=external_data, protect=() if in_place else (model,))
    if as_json:
        report = result_json(model, target if result.ok else None, result)
        if pruned:
            from graphopt.prune import prune_result_json

            report["pruning"] = prune_result_json(pruned)
        if quantized:
            report["quantization"] = quantize_result_json(quantized)
        click.echo(json.dumps(report, indent=2))
    else:
        render_result(result, out)
        if pruned:
            from graphopt.prune import render_pruning

            render_pruning(pruned, out)
        if quantized:
            render_quantization(quantized, out, all_layers=report_layers)
        if result.ok:
            out.print(f"wrote {target} ({target.stat().st_size / 1e6:.2f} MB)")
    if not result.ok:
        err.print(f"graphopt: verification failed; first failing pass: {result.culprit or 'unknown'}; "
                  f"nothing written (rerun with --skip {result.culprit or 'PASS'}, or allow more error with --rtol)",
                  soft_wrap=True)
        sys.exit(EXIT_VERIFICATION_FAILED)


@cli.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True,
              help="Where the demo writes its models and report.html.")
@click.option("--runs", type=click.IntRange(min=0), default=50, show_default=True,
              help="Timed runs per model and backend (0: no latency).")
@click.option("--threads", default="1", show_default=True, metavar="N,N,...", help="Thread counts to time.")
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write WORKDIR/report.html (needs matplotlib: .[report]).")
def demo(workdir, runs, threads, report):
    """The whole job on the bundled digits-cnn: inspect, optimize (cleanup, fusion, int8 calibrated
    on the bundled set), then compare fp32 and int8 on onnxruntime and graphopt (accuracy on the
    labelled test set, per-layer SQNR, latency) and write an HTML report."""
    from graphopt.compare import parse_counts
    from graphopt.demo import run_demo

    if not run_demo(workdir, out, runs=runs, threads=tuple(parse_counts(threads, "--threads")), report=report):
        sys.exit(EXIT_VERIFICATION_FAILED)


@cli.command()
@click.argument("model", metavar="NAME|FILE.py:FACTORY")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Where to write the ONNX file.")
@click.option("--opset", type=click.IntRange(min=7), help="ONNX opset to export (default: the exporter's).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D1,D2,...",
              help="Example shape of an input, e.g. --input-shape image=1,3,224,224 (repeatable; required for "
                   "FILE.py:FACTORY, one per forward() argument, in order).")
@click.option("--dynamic-batch", is_flag=True, help="Make axis 0 of every input a symbolic 'batch' dim.")
def export(model, output, opset, input_shapes, dynamic_batch):
    """Export a zoo model or your own PyTorch module to ONNX and check it against PyTorch.

    NAME is a zoo model (simplenet, digits-cnn, resnet18, mobilenetv3, bert-mini, yolo-head, mlp);
    FILE.py:FACTORY names a function in that file that returns a torch.nn.Module. Uses the
    dynamo exporter, falling back to the TorchScript exporter if it fails; then runs the file on
    onnxruntime and prints the largest difference from PyTorch's output. Needs torch:
    pip install -e ".[torch]".

    Example: graphopt export resnet18 -o resnet18.onnx
    """
    import warnings

    from graphopt.export import ExportFallbackWarning, export_model, parse_input_shapes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExportFallbackWarning)  # reported below, on one line
        result = export_model(model, output, opset=opset, input_shapes=parse_input_shapes(input_shapes),
                              dynamic_batch=dynamic_batch)
    if result.fallback_reason:
        err.print(f"graphopt: warning: the dynamo exporter failed ({result.fallback_reason}); "
                  "used the TorchScript exporter", markup=False, soft_wrap=True)
    size = result.path.stat().st_size + (result.data_path.stat().st_size if result.data_path else 0)
    out.print(f"wrote {result.path} ({size / 1e6:.2f} MB, {result.exporter} exporter, opset {result.opset})",
              markup=False)
    for name, dims in result.inputs.items():
        out.print(f"  input {name}: [{', '.join(map(str, dims))}]", markup=False)
    for name, diff in result.output_diffs.items():
        out.print(f"  output {name}: max abs diff vs torch {diff:.3g}", markup=False)
    if len(result.output_diffs) > 1:
        out.print(f"max abs diff vs torch: {result.max_abs_diff:.3g}", markup=False)


def _backends_option(f):
    return click.option("--backends", default="onnxruntime,graphopt", show_default=True,
                        help="Comma list of backends: onnxruntime, graphopt.")(f)


def _latency_options(f):
    f = click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True,
                     help="Untimed runs per session before timing.")(f)
    f = click.option("--runs", type=click.IntRange(min=0), default=20, show_default=True,
                     help="Timed runs per session, interleaved across variants (0: no latency).")(f)
    return click.option("--threads", default="1", show_default=True, metavar="N,N,...",
                        help="Thread counts to time, e.g. 1,2.")(f)


def _output_options(f):
    f = click.option("--report", type=click.Path(path_type=Path),
                     help="Write a single-file HTML report with plots (needs matplotlib: .[report]).")(f)
    return click.option("--json", "json_path", type=click.Path(path_type=Path),
                        help="Write the results as JSON (schema_version 1) to this file; '-' prints it instead "
                             "of the tables.")(f)


class _RunProgress:
    """A transient progress bar on stderr for the timed runs; ``progress(total=N)`` then ``progress()``."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("timing"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                            TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal)
        self.bar.start()
        self.task = self.bar.add_task("runs", total=None)
        return self

    def __call__(self, total: int | None = None) -> None:
        if total is not None:
            self.bar.update(self.task, total=total)
        else:
            self.bar.advance(self.task)

    def __exit__(self, *exc):
        self.bar.stop()
        return False


def _write_outputs(result, json_path: Path | None, report_path: Path | None) -> None:
    from graphopt.compare import render_comparison

    report = result.to_json()
    if json_path is not None and str(json_path) == "-":
        click.echo(json.dumps(report, indent=2))
    else:
        render_comparison(result, out)
        if json_path is not None:
            json_path.write_text(json.dumps(report, indent=2) + "\n")
            out.print(f"wrote {json_path}", markup=False)
    if report_path is not None:
        from graphopt.report import write_report

        write_report(report, report_path)
        (err if json_path is not None and str(json_path) == "-" else out).print(f"wrote {report_path}", markup=False)


@cli.command()
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("optimized", nargs=-1, type=click.Path(path_type=Path))
@_backends_option
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Inputs: an .npz with one array per model input, samples on axis 0.")
@click.option("--labels", metavar="FILE.npz|KEY", help="Class ids for top-1 accuracy: an .npz with one array, or a "
              "key of --data (default: a 'label'/'labels' key of --data that is not a model input).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Samples per run for the accuracy pass (a fixed batch dim takes its own size).")
@_latency_options
@click.option("--per-layer", is_flag=True, help="SQNR of each intermediate tensor against the original tensor "
              "it stands for (on onnxruntime); the worst are flagged.")
@click.option("--atol", type=click.FloatRange(min=0), help="Largest max abs error allowed on any output.")
@click.option("--rtol", type=click.FloatRange(min=0), help="Largest max rel error allowed on any output.")
@click.option("--min-cosine", type=click.FloatRange(-1, 1), help="Smallest output cosine similarity allowed.")
@_output_options
def compare(original, optimized, backends, data, labels, batch_size, threads, runs, warmup, per_layer, atol, rtol,
            min_cosine, json_path, report):
    """Accuracy and latency of ORIGINAL and each OPTIMIZED model on each backend.

    Every variant runs on every backend over --data and each output is compared with ORIGINAL on
    onnxruntime: max abs and max rel error, cosine, top-1 agreement for classifier outputs, top-1
    accuracy with labels. Then each session is warmed up and timed, runs interleaved across
    variants: p50/p90/min, size on disk, peak memory. A backend that cannot run a model is listed
    as unavailable, with the reason. Exit status 1 when --atol/--rtol/--min-cosine is broken.

    Example: graphopt compare m.onnx m.int8.onnx --data test.npz --per-layer --min-cosine 0.999 --report r.html
    """
    from graphopt.compare import (Tolerance, check_same_inputs, compare as run_compare, load_dataset,
                                  parse_backends, parse_counts, variants_from_paths)

    backends = parse_backends(backends)
    threads = parse_counts(threads, "--threads")
    variants = variants_from_paths([original, *optimized])
    check_same_inputs(variants)
    dataset = load_dataset(data, variants[0].model, labels, batch_size=batch_size)
    with _RunProgress() as progress:
        result = run_compare(variants, dataset, backends=backends, threads=threads, runs=runs, warmup=warmup,
                             per_layer=per_layer, tolerance=Tolerance(atol, rtol, min_cosine), progress=progress)
    _write_outputs(result, json_path, report)
    if not result.ok:
        broken = [f"{s.variant.name} on {s.backend}" for s in result.slots if s.accuracy and not s.accuracy.ok]
        err.print(f"graphopt: tolerance broken by {', '.join(broken)}", markup=False, soft_wrap=True)
        sys.exit(EXIT_VERIFICATION_FAILED)


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@_backends_option
@click.option("--batch", "batches", default="1", show_default=True, metavar="N,N,...",
              help="Batch sizes (set through the symbolic batch dim; a fixed-batch model runs at its own).")
@_latency_options
@_output_options
def bench(models, backends, batches, threads, runs, warmup, json_path, report):
    """Latency of each MODEL on each backend over thread counts and batch sizes (seeded inputs).

    Example: graphopt bench m.onnx m.int8.onnx --threads 1,2 --batch 1,8 --json bench.json
    """
    from graphopt.compare import bench as run_bench, parse_backends, parse_counts, variants_from_paths

    with _RunProgress() as progress:
        result = run_bench(variants_from_paths(models), backends=parse_backends(backends),
                           threads=parse_counts(threads, "--threads"), batches=parse_counts(batches, "--batch"),
                           runs=runs, warmup=warmup, progress=progress)
    _write_outputs(result, json_path, report)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--input", "inputs", type=click.Path(path_type=Path), required=True,
              help="An .npz file with one array per model input, named like the inputs.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Where to write the outputs (.npz, one array per model output).")
@click.option("--backend", type=click.Choice(["graphopt", "onnxruntime"]), default="graphopt", show_default=True,
              help="Which runtime executes the model.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def run(model, inputs, output, backend, threads, as_json):
    """Run MODEL on the arrays in --input and write its outputs to -o.

    Example: graphopt run model.onnx --input feeds.npz -o outputs.npz --backend graphopt --threads 2
    """
    from graphopt.runtime.cli_run import run_command

    summary = run_command(model, inputs, output, backend=backend, threads=threads)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    out.print(f"ran {model} on {summary['backend']} ({threads} thread{'s' if threads > 1 else ''}) "
              f"in {summary['seconds'] * 1e3:.2f} ms; wrote {output}", markup=False)
    for name, spec in summary["outputs"].items():
        out.print(f"  output {name}: {spec['dtype']} {spec['shape']}", markup=False)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help=".npz with one array per model input (and the labels).")
@click.option("--labels", required=True, help="Name of the labels array in --data, or a .npy of class indices.")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="Accuracy budget in points for the recommended per-layer ratios.")
@click.option("--levels", default="0.3,0.5,0.7,0.9", show_default=True, help="Sparsity levels to try per layer.")
@click.option("--method", type=click.Choice(["magnitude", "wanda", "obs"]), default="magnitude", show_default=True)
@click.option("--calibration", metavar="DATA", help="Calibration inputs for --method wanda|obs.")
@click.option("--plot", type=click.Path(path_type=Path), help="Also write a PNG plot (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def sensitivity(model, data, labels, max_drop, levels, method, calibration, plot, as_json):
    """Accuracy of MODEL with each prunable layer pruned alone at several sparsity levels, and the
    per-layer ratios recommended under an accuracy budget.

    Example: graphopt sensitivity models/digits_cnn.onnx --data models/digits_test.npz --labels label
    """
    from graphopt.sensitivity import render_sensitivity, run_sensitivity

    try:
        level_values = [float(x) for x in levels.split(",") if x.strip()]
    except ValueError:
        raise GraphoptError(f"--levels '{levels}': expected comma-separated fractions", "e.g. --levels 0.5,0.7")
    result = run_sensitivity(model, data, labels, levels=level_values, max_drop=max_drop, method=method,
                             calibration=calibration, plot=plot)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        render_sensitivity(result, out)


def result_json(model: Path, written: Path | None, result) -> dict:
    return {
        "input": str(model),
        "output": None if written is None else str(written),
        "ok": result.ok,
        "culprit": result.culprit,
        "nodes_before": result.reports[0].nodes_before if result.reports else None,
        "nodes_after": result.reports[-1].nodes_after if result.reports else None,
        "passes": [r.to_json() for r in result.reports],
        "verification": None if result.verification is None else result.verification.to_json(),
    }


def main() -> None:
    cli.main(prog_name="graphopt")
