"""A single-file HTML report of a ``graphopt compare`` / ``graphopt bench`` run.

The report is built from the run's JSON (:meth:`graphopt.compare.Comparison.to_json`), so a saved
JSON file can be turned into a report later. Plots are PNGs drawn with matplotlib (``pip install -e
".[report]"``) and embedded as ``data:image/png;base64`` URIs: the file needs nothing beside it.

- compare: latency (p50 at the first thread count) against accuracy (top-1 accuracy with labels,
  else the lowest output cosine), one point per variant and backend; per-layer SQNR bars per
  variant, flagged tensors in red.
- bench: p50 latency per sample against batch size, one line per variant, backend and thread count.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

from graphopt.errors import GraphoptError
from graphopt.model_io import OutputPathError

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child,td:nth-child(2){text-align:left}.bad{color:#b00}.na{color:#a60}
img{max-width:100%;display:block;margin:1em 0}.dim{color:#666}"""


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise GraphoptError("--report needs matplotlib", 'pip install -e ".[report]"') from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    figure.clear()
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _slot_label(result: dict) -> str:
    return f"{result['variant']} / {result['backend']}"


def latency_accuracy_plot(report: dict) -> str | None:
    """Base64 PNG: p50 latency (first thread count, batch 1 or fixed) vs accuracy, per variant × backend."""
    points = []
    labelled = report["data"] is not None and report["data"]["labels"] is not None
    for result in report["results"]:
        acc, latency = result["accuracy"], result["latency"]
        if acc is None or not latency or latency[0]["p50_ms"] is None:
            continue
        cosines = [o["cosine"] for o in acc["outputs"] if o["cosine"] is not None]
        score = acc["top1_accuracy"] if labelled else (min(cosines) if cosines else None)
        if score is not None:
            points.append((_slot_label(result), latency[0]["p50_ms"], score))
    if not points:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v<>"
    for i, (label, ms, score) in enumerate(points):
        axes.scatter(ms, score, s=70, marker=markers[i % len(markers)], label=label, alpha=0.8)
    axes.legend(fontsize=8)
    axes.set_xlabel(f"p50 latency, ms ({report['results'][0]['latency'][0]['threads']} thread(s))"
                    if report["results"][0]["latency"] else "p50 latency, ms")
    axes.set_ylabel("top-1 accuracy" if labelled else "lowest output cosine vs reference")
    axes.set_title("latency vs accuracy")
    axes.grid(alpha=0.3)
    png = _png(figure)
    plt.close(figure)
    return png


def layer_error_plot(layers: dict) -> str | None:
    """Base64 PNG: SQNR of each paired tensor of one variant, lowest first, flagged ones red."""
    tensors = [t for t in layers["tensors"] if t["sqnr_db"] is not None]
    if not tensors:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 0.6 + 0.28 * len(tensors)))
    names = [t["name"] for t in tensors][::-1]
    values = [t["sqnr_db"] for t in tensors][::-1]
    colors = ["#c0392b" if t["flagged"] else "#2e86c1" for t in tensors][::-1]
    axes.barh(names, values, color=colors)
    axes.axvline(layers["low_sqnr_db"], color="#c0392b", linestyle="--", linewidth=1)
    axes.set_xlabel("SQNR vs original tensor, dB (higher is better)")
    axes.set_title(f"per-layer error: {layers['variant']}")
    axes.tick_params(axis="y", labelsize=8)
    png = _png(figure)
    plt.close(figure)
    return png


def batch_latency_plot(report: dict) -> str | None:
    """Base64 PNG (bench): p50 latency per sample vs batch size, a line per slot and thread count."""
    lines = {}
    for result in report["results"]:
        for lat in result["latency"]:
            if lat["p50_ms"] is not None:
                key = f"{_slot_label(result)}, {lat['threads']} thr"
                lines.setdefault(key, []).append((lat["batch"], lat["p50_ms"] / lat["batch"]))
    if not lines:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, points in lines.items():
        points.sort()
        axes.plot([b for b, _ in points], [ms for _, ms in points], marker="o", label=label)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch")
    axes.set_ylabel("p50 ms per sample")
    axes.set_title("latency per sample vs batch")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    png = _png(figure)
    plt.close(figure)
    return png


def _cell(value, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.2%}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _accuracy_table(report: dict) -> str:
    rows = []
    for r in report["results"]:
        if r["accuracy"] is None:
            rows.append([_cell(r["variant"]), _cell(r["backend"]),
                         f"<span class=na>unavailable: {_cell(r['reason'])}</span>", "", "", "", "", "", ""])
            continue
        for o in r["accuracy"]["outputs"]:
            ok = "yes" if o["ok"] else "<span class=bad>NO</span>"
            rows.append([_cell(r["variant"]), _cell(r["backend"]), _cell(o["name"]), _cell(o["max_abs"]),
                         _cell(o["max_rel"]), _cell(o["cosine"], 7), _percent(o["top1_agreement"]),
                         _percent(r["accuracy"]["top1_accuracy"]), ok])
    return _table(["variant", "backend", "output", "max abs", "max rel", "cosine", "top-1 agreement",
                   "top-1 accuracy", "ok"], rows)


def _latency_table(report: dict) -> str:
    sizes = {v["name"]: v["size_bytes"] for v in report["variants"]}
    rows = []
    for r in report["results"]:
        if not r["latency"] and not r["available"]:
            rows.append([_cell(r["variant"]), _cell(r["backend"]),
                         f"<span class=na>unavailable: {_cell(r['reason'])}</span>"] + [""] * 6)
        for lat in r["latency"]:
            memory = None if lat["peak_memory_bytes"] is None else lat["peak_memory_bytes"] / 1e6
            rows.append([_cell(r["variant"]), _cell(r["backend"]), _cell(lat["threads"]), _cell(lat["batch"]),
                         _cell(lat["p50_ms"]), _cell(lat["p90_ms"]), _cell(lat["min_ms"]), _cell(memory),
                         _cell(sizes[r["variant"]] / 1e3)])
    return _table(["variant", "backend", "threads", "batch", "p50 ms", "p90 ms", "min ms", "peak MB", "size kB"], rows)


def _layers_section(layers: dict) -> str:
    png = layer_error_plot(layers)
    rows = [[_cell(t["name"]), _cell(t["original"]),
             f"<span class=bad>{_cell(t['sqnr_db'])}</span>" if t["flagged"] else _cell(t["sqnr_db"]),
             _cell(t["cosine"], 6), _cell(t["max_abs"])] for t in layers["tensors"]]
    return (f"<h3>{html.escape(layers['variant'])} (paired by {html.escape(layers['pairing'])})</h3>"
            + (f'<img alt="per-layer SQNR of {html.escape(layers["variant"])}" src="data:image/png;base64,{png}">'
               if png else "<p class=dim>no paired tensors</p>")
            + _table(["tensor", "stands for", "SQNR dB", "cosine", "max abs"], rows))


def render_html(report: dict) -> str:
    """The HTML text of ``report`` (a compare or bench JSON object)."""
    tool = report["tool"]
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>graphopt {tool}</title>"
             f"<style>{_STYLE}</style></head><body><h1>graphopt {tool}</h1>"]
    reference = report["reference"]
    data = report["data"]
    if data is not None:
        parts.append(f"<p>Reference: <b>{html.escape(reference['variant'])}</b> on {reference['backend']}. "
                     f"Data: {html.escape(str(data['path']))}, {data['samples']} samples"
                     + (f", labels {html.escape(data['labels'])}" if data["labels"] else "") + ". "
                     + ("All tolerances hold." if report["ok"] else "<span class=bad>A tolerance is broken.</span>")
                     + "</p>")
    plot = latency_accuracy_plot(report) if tool == "compare" else batch_latency_plot(report)
    if plot:
        parts.append(f'<img alt="{"latency vs accuracy" if tool == "compare" else "latency vs batch"}" '
                     f'src="data:image/png;base64,{plot}">')
    if data is not None:
        parts.append("<h2>Accuracy</h2>" + _accuracy_table(report))
    if report["layers"]:
        parts.append("<h2>Per-layer error</h2>" + "".join(_layers_section(layers) for layers in report["layers"]))
    parts.append("<h2>Latency</h2>" + _latency_table(report))
    parts.append("<p class=dim>peak MB: resident-memory growth while a session is created and warmed up.</p>")
    for note in report["notes"]:
        parts.append(f"<p class=dim>note: {html.escape(note)}</p>")
    parts.append(f"<h2>JSON</h2><pre>{html.escape(json.dumps(report, indent=1))}</pre></body></html>")
    return "".join(parts)


def write_report(report: dict, path: str | os.PathLike) -> Path:
    """Write the HTML report of ``report`` to ``path`` (atomically: a temporary file renamed)."""
    path = Path(path)
    text = render_html(report)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputPathError(f"{path}: cannot write the report ({exc.strerror})", "choose another --report path") \
            from exc
    return path
