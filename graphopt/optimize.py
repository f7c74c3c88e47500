"""Builds the pass pipeline from user options, runs it, and renders what it did."""
from __future__ import annotations

import onnx
from rich.console import Console
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


def render_result(result: PipelineResult, console: Console) -> None:
    passes = Table(title="passes", title_justify="left")
    for column in ("pass", "nodes", "rewrites", "ms"):
        passes.add_column(column, justify="right" if column in ("nodes", "ms") else "left")
    for r in result.reports:
        rewrites = ", ".join(f"{rule} ×{n}" for rule, n in r.rewrites.most_common()) or "-"
        if r.notes:
            rewrites += "".join(f"\n[dim]{note}[/dim]" for note in r.notes)
        passes.add_row(r.name, f"{r.nodes_before} → {r.nodes_after}", rewrites, f"{r.seconds * 1e3:.0f}")
    console.print(passes)
    v = result.verification
    if v is None:
        console.print("verification: skipped (--no-verify)")
        return
    table = Table(title=f"verification on onnxruntime (seed {v.seed}, rtol {v.rtol:g}, inputs "
                        + ", ".join(f"{k}{v_}" for k, v_ in v.input_shapes.items()) + ")", title_justify="left")
    for column in ("output", "shape", "max abs", "max rel", "cosine", "ok"):
        table.add_column(column, justify="left" if column in ("output", "ok") else "right")
    for o in v.outputs:
        status = "[green]yes[/green]" if o.ok else f"[red]NO[/red] {o.problem}"
        table.add_row(o.name, "×".join(map(str, o.shape)), f"{o.max_abs:.3g}", f"{o.max_rel:.3g}",
                      f"{o.cosine:.6f}", status)
    console.print(table)
