"""Facts about an ONNX model, for ``graphopt inspect``: op histogram, shapes, parameters, MACs,
weight sparsity and int8 coverage.

Shapes come from ONNX shape inference (with data propagation) on a copy of the graph whose
symbolic input dims are replaced by concrete values (``feeds.resolve_shape``: ``dims`` first,
then 1 for a batch-like dim, 32 otherwise), so that MACs are numbers. The copy carries no large
weights: a weight only needs its shape, and leaving its data out keeps inference fast and lets it
run on models over 2 GiB. Nothing is executed; onnxruntime is not used.

Definitions, all over the main graph (If/Loop/Scan bodies are not entered):

- **Parameters**: every numeric initializer (dense or sparse) and every ``Constant`` node output,
  except int64 tensors: in ONNX those are shapes, axes, pads and indices, not learned weights.
  Strings are not counted either. Bytes are element counts times the element size (4-bit types
  pack two to a byte). A ``ConstantOfShape`` output is computed, not stored, so it is no parameter.
- **MACs** (multiply-accumulates, for one run at the resolved input shapes):

  1. Conv, ConvInteger, QLinearConv: ``N·Cout·prod(out spatial)·(Cin/group)·prod(kernel)``, i.e.
     ``numel(Y)·prod(W.shape[1:])``, for 1-D, 2-D and 3-D alike (stride, padding and dilation act
     through the output shape; bias adds are not counted).
  2. ConvTranspose: ``N·Cin·prod(in spatial)·(Cout/group)·prod(kernel)``, i.e.
     ``numel(X)·prod(W.shape[1:])``.
  3. Gemm: ``M·N·K`` after ``transA``/``transB``; the ``C`` term and ``alpha``/``beta`` add nothing.
  4. MatMul, MatMulInteger, QLinearMatMul: ``prod(broadcast batch dims)·M·N·K`` with numpy's
     rules (a 1-D operand gains a dim of 1 that is then dropped).
  5. Every other op: 0 MACs.

  A compute node whose operand shapes are not all known numbers has unknown MACs; it adds nothing
  to ``macs`` and is counted in ``macs_unknown_nodes``.
- **Sparsity**: zeros in the constant weight (input W, or B for Gemm/MatMul) of each
  Conv/ConvTranspose/Gemm/MatMul and of their integer forms; a weight that is the output of a
  ``DequantizeLinear`` of a constant counts its quantized values equal to the zero point. A weight
  shared by several nodes counts once. Non-constant weights are left out.
- **Quantized coverage**: a Conv/ConvTranspose/Gemm/MatMul is int8 when both its activation (input
  0) and its weight come from ``DequantizeLinear`` (QDQ format); QLinearConv, QLinearMatMul,
  ConvInteger and MatMulInteger are always int8. ``coverage`` is the int8 share of these nodes.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper
from rich.console import Console
from rich.table import Table
from rich.text import Text

from graphopt.feeds import input_specs, resolve_shape, value_info_spec

DEFAULT_DOMAINS = ("", "ai.onnx")
INTEGER_COMPUTE_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")
# Input index of the weight, and of its zero point for the integer forms.
WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1,
                "QLinearConv": 3, "QLinearMatMul": 3, "ConvInteger": 1, "MatMulInteger": 1}
WEIGHT_ZERO_POINT_INPUT = {"QLinearConv": 5, "QLinearMatMul": 5, "ConvInteger": 3, "MatMulInteger": 3}
# Above this many elements a constant reaches shape inference as a typed input, without its data.
# Shape-carrying operands (Reshape shapes, Resize scales, Slice starts) are far smaller.
SKELETON_MAX_CONSTANT_ELEMENTS = 1024
_SUB_BYTE_BITS = {getattr(onnx.TensorProto, name): bits for name, bits in (
    ("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2),
    ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6)) if hasattr(onnx.TensorProto, name)}
_NOT_PARAMETERS = (onnx.TensorProto.INT64, onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED)

Shape = list  # of int (fixed), str (symbolic) or None (unknown); None for an unknown rank


@dataclasses.dataclass
class _NodeFacts:
    name: str
    op: str
    inputs: list[Shape | None]
    output: list[Shape | None]
    params: int
    macs: int | None
    weight: str | None  # name of the constant weight whose zeros count for sparsity
    zeros: int | None
    weight_elements: int | None
    int8: bool | None  # None for nodes that are not Conv/ConvTranspose/Gemm/MatMul or integer forms

    def as_dict(self) -> dict:
        fraction = None if not self.weight_elements else self.zeros / self.weight_elements
        return {"name": self.name, "op": self.op, "inputs": self.inputs, "output": self.output,
                "params": self.params, "macs": self.macs, "sparsity": fraction, "int8": self.int8}


def inspect_model(model: onnx.ModelProto, *, dims: dict[str, int] | None = None, nodes: bool = False,
                  top: int | None = None) -> dict:
    """Describe ``model`` as a JSON-serialisable dict (see the module docstring for definitions).

    ``dims`` gives values to symbolic input dims; ``nodes`` adds a per-node list in graph order;
    ``top`` adds the ``top`` nodes with the most MACs.
    """
    dims = dict(dims or {})
    graph = model.graph
    specs = input_specs(model)
    input_shapes = {spec.name: resolve_shape(spec, dims) for spec in specs}
    constants = _constant_tensors(graph)
    shapes, inference_error = _infer_shapes(model, input_shapes, constants)
    producers = {out: node for node in graph.node for out in node.output if out}
    facts = [_node_facts(i, node, shapes, constants, producers) for i, node in enumerate(graph.node)]

    report = {
        "producer": {"name": model.producer_name, "version": model.producer_version},
        "ir_version": model.ir_version,
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": [_io_entry(info, shapes) for info in graph.input if info.name in input_shapes],
        "outputs": [_io_entry(info, shapes) for info in graph.output],
        "dims": _symbolic_dims_used(specs, dims),
        "num_nodes": len(graph.node),
        "op_histogram": _sorted_desc(Counter(f.op for f in facts)),
        **_parameter_totals(constants),
        "macs": sum(f.macs for f in facts if f.macs),
        "macs_unknown_nodes": sum(1 for f in facts if f.macs is None),
        "macs_by_op": _sorted_desc(_macs_by_op(facts)),
        "sparsity": _sparsity_totals(facts),
        "quantized_nodes": _quantized_totals(facts),
        "shape_inference_error": inference_error,
    }
    if nodes:
        report["nodes"] = [f.as_dict() for f in facts]
    if top is not None:
        heavy = sorted((f for f in facts if f.macs), key=lambda f: -f.macs)[:max(top, 0)]
        report["top"] = [{**f.as_dict(), "share": f.macs / report["macs"]} for f in heavy]
    return report


# --- constants and parameters -------------------------------------------------------------------

def _constant_tensors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers (sparse ones made dense) and Constant node outputs, by tensor name."""
    constants = {t.name: t for t in graph.initializer}
    for sparse in graph.sparse_initializer:
        constants[sparse.values.name] = _densify(sparse)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
            tensor = _constant_node_value(node)
            if tensor is not None:
                constants[node.output[0]] = tensor
    return constants


def _constant_node_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if attr.name == "value":
            return value
        if attr.name == "sparse_value":
            return _densify(value)
        if attr.name in ("value_float", "value_floats"):
            return numpy_helper.from_array(np.asarray(value, dtype=np.float32))
        if attr.name in ("value_int", "value_ints"):
            return numpy_helper.from_array(np.asarray(value, dtype=np.int64))
        if attr.name in ("value_string", "value_strings"):
            return onnx.helper.make_tensor("", onnx.TensorProto.STRING, np.shape(value),
                                           value if isinstance(value, list) else [value])
    return None


def _densify(sparse: onnx.SparseTensorProto) -> onnx.TensorProto:
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices)
    dense = np.zeros(math.prod(sparse.dims), dtype=values.dtype)
    # Indices are either linear ([NNZ]) or coordinates ([NNZ, rank]).
    flat = indices if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), tuple(sparse.dims))
    dense[flat] = values
    return numpy_helper.from_array(dense.reshape(tuple(sparse.dims)), sparse.values.name)


def _is_parameter(tensor: onnx.TensorProto) -> bool:
    return tensor.data_type not in _NOT_PARAMETERS


def _dtype_name(elem_type: int) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _tensor_bytes(elem_type: int, count: int) -> int:
    if elem_type in _SUB_BYTE_BITS:
        return -(-count * _SUB_BYTE_BITS[elem_type] // 8)
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def _parameter_totals(constants: dict[str, onnx.TensorProto]) -> dict:
    by_dtype: dict[str, dict[str, int]] = {}
    for tensor in constants.values():
        if not _is_parameter(tensor):
            continue
        count = math.prod(tensor.dims)
        entry = by_dtype.setdefault(_dtype_name(tensor.data_type), {"count": 0, "bytes": 0})
        entry["count"] += count
        entry["bytes"] += _tensor_bytes(tensor.data_type, count)
    by_dtype = dict(sorted(by_dtype.items(), key=lambda item: -item[1]["bytes"]))
    return {"num_params": sum(e["count"] for e in by_dtype.values()),
            "param_bytes": sum(e["bytes"] for e in by_dtype.values()),
            "params_by_dtype": by_dtype}


# --- shapes --------------------------------------------------------------------------------------

def _infer_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]],
                  constants: dict[str, onnx.TensorProto]) -> tuple[dict[str, Shape], str | None]:
    """Shapes of all tensors at the resolved input shapes, and the inference error if it failed."""
    skeleton = _shape_skeleton(model, input_shapes, constants)
    shapes = {name: list(t.dims) for name, t in constants.items()}
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
        error = None
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError,
            RuntimeError) as exc:
        inferred = skeleton
        error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    g = inferred.graph
    for info in (*g.input, *g.value_info, *g.output):
        shape = _value_info_shape(info)
        if shape is not None:
            shapes[info.name] = shape
    return shapes, error


def _shape_skeleton(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]],
                    constants: dict[str, onnx.TensorProto]) -> onnx.ModelProto:
    """The model with concrete input shapes, no declared intermediate shapes, and large constants
    turned into typed graph inputs that carry no data."""
    graph = model.graph
    large = {name for name, t in constants.items()
             if math.prod(t.dims) > SKELETON_MAX_CONSTANT_ELEMENTS and t.data_type != onnx.TensorProto.INT64}
    inputs = []
    for info in graph.input:
        if info.name in input_shapes:
            inputs.append(_with_shape(info, input_shapes[info.name]))
    inputs.extend(onnx.helper.make_tensor_value_info(name, constants[name].data_type, constants[name].dims)
                  for name in large)
    outputs = [_with_shape(info, None) for info in graph.output]
    skeleton_graph = onnx.GraphProto(
        name=graph.name,
        node=[n for n in graph.node if not (n.op_type == "Constant" and n.output and n.output[0] in large)],
        initializer=[t for t in graph.initializer if t.name not in large],
        sparse_initializer=[s for s in graph.sparse_initializer if s.values.name not in large],
        input=inputs, output=outputs)
    # IR 4 lets initializers be absent from the graph inputs; older models list them there.
    return onnx.ModelProto(ir_version=max(model.ir_version, 4), opset_import=model.opset_import,
                           functions=model.functions, graph=skeleton_graph)


def _with_shape(info: onnx.ValueInfoProto, shape: tuple[int, ...] | None) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    if copy.type.HasField("tensor_type") and copy.type.tensor_type.HasField("shape"):
        copy.type.tensor_type.ClearField("shape")
        if shape is not None:
            copy.type.tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension(dim_value=d) for d in shape)
    return copy


def _value_info_shape(info: onnx.ValueInfoProto) -> Shape | None:
    ttype = info.type.tensor_type
    if not info.type.HasField("tensor_type") or not ttype.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in ttype.shape.dim]


def _concrete(shapes: dict[str, Shape], name: str) -> tuple[int, ...] | None:
    shape = shapes.get(name) if name else None
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(shape)


def _io_entry(info: onnx.ValueInfoProto, shapes: dict[str, Shape]) -> dict:
    """Declared shape (symbolic dims as names; None for an unknown rank) and inferred shape."""
    return {"name": info.name, "dtype": value_info_spec(info).dtype.name, "shape": _value_info_shape(info),
            "resolved_shape": shapes.get(info.name)}


def _symbolic_dims_used(specs, dims: dict[str, int]) -> dict[str, int]:
    used = {}
    for spec in specs:
        for position, dim in enumerate(spec.dims):
            if isinstance(dim, str):
                used[dim] = resolve_shape(spec, dims)[position]
    return used


# --- per node ------------------------------------------------------------------------------------

def _node_facts(index: int, node: onnx.NodeProto, shapes: dict[str, Shape],
                constants: dict[str, onnx.TensorProto], producers: dict[str, onnx.NodeProto]) -> _NodeFacts:
    op = node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}:{node.op_type}"
    compute = node.domain in DEFAULT_DOMAINS and node.op_type in WEIGHT_INPUT
    params = sum(math.prod(constants[name].dims) for name in node.input
                 if name in constants and _is_parameter(constants[name]))
    weight, zeros, elements = _weight_zeros(node, constants, producers) if compute else (None, None, None)
    return _NodeFacts(
        name=node.name or f"{node.op_type}#{index}", op=op,
        inputs=[shapes.get(name) if name else None for name in node.input],
        output=[shapes.get(name) if name else None for name in node.output],
        params=params,
        macs=_node_macs(node, shapes) if compute else 0,
        weight=weight, zeros=zeros, weight_elements=elements,
        int8=_is_int8(node, producers) if compute else None)


def _node_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int | None:
    op = node.op_type
    weight = _concrete(shapes, _input(node, WEIGHT_INPUT[op]))
    if weight is None:
        return None
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        y = _concrete(shapes, node.output[0])
        return None if y is None else math.prod(y) * math.prod(weight[1:])
    x = _concrete(shapes, _input(node, 0))
    if x is None:
        return None
    if op == "ConvTranspose":
        return math.prod(x) * math.prod(weight[1:])
    if op == "Gemm":
        return _gemm_macs(x, weight, _attribute(node, "transA", 0), _attribute(node, "transB", 0))
    return _matmul_macs(x, weight)


def _gemm_macs(a: tuple[int, ...], b: tuple[int, ...], trans_a: int, trans_b: int) -> int | None:
    if len(a) != 2 or len(b) != 2:
        return None
    m, k = (a[1], a[0]) if trans_a else a
    n = b[0] if trans_b else b[1]
    return m * n * k


def _matmul_macs(a: tuple[int, ...], b: tuple[int, ...]) -> int | None:
    if not a or not b:
        return None
    a = (1, *a) if len(a) == 1 else a
    b = (*b, 1) if len(b) == 1 else b
    try:
        batch = np.broadcast_shapes(a[:-2], b[:-2])
    except ValueError:
        return None
    return math.prod(batch) * a[-2] * b[-1] * a[-1]


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if index < len(node.input) else ""


def _attribute(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _from_dequantize(name: str, producers: dict[str, onnx.NodeProto]) -> bool:
    node = producers.get(name)
    return node is not None and node.op_type == "DequantizeLinear"


def _is_int8(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> bool:
    if node.op_type in INTEGER_COMPUTE_OPS:
        return True
    return (_from_dequantize(_input(node, 0), producers)
            and _from_dequantize(_input(node, WEIGHT_INPUT[node.op_type]), producers))


def _weight_zeros(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto],
                  producers: dict[str, onnx.NodeProto]) -> tuple[str | None, int | None, int | None]:
    """The constant weight of a compute node, its zero count and its element count."""
    name = _input(node, WEIGHT_INPUT[node.op_type])
    # Zero points of Conv weights run along output channels (axis 0), of MatMul B along columns.
    axis = 0 if "Conv" in node.op_type else None
    zero_point_name = _input(node, WEIGHT_ZERO_POINT_INPUT.get(node.op_type, len(node.input)))
    dequantize = producers.get(name)
    if dequantize is not None and dequantize.op_type == "DequantizeLinear":
        name, zero_point_name = _input(dequantize, 0), _input(dequantize, 2)
        axis = _attribute(dequantize, "axis", 1)
    if name not in constants or (zero_point_name and zero_point_name not in constants):
        return None, None, None
    values = numpy_helper.to_array(constants[name])
    zero_point = numpy_helper.to_array(constants[zero_point_name]) if zero_point_name else None
    zeros = _count_zeros(values, zero_point, axis)
    return (None, None, None) if zeros is None else (name, zeros, values.size)


def _count_zeros(values: np.ndarray, zero_point: np.ndarray | None, axis: int | None) -> int | None:
    """Elements equal to the zero point (a scalar, per-axis or broadcastable); None if it does not fit."""
    if zero_point is None or zero_point.size == 1:
        zero = 0 if zero_point is None else zero_point.reshape(())
        return int(np.count_nonzero(values == zero))
    if axis is not None and zero_point.ndim == 1 and values.ndim:
        shape = [1] * values.ndim
        shape[axis] = -1
        zero_point = zero_point.reshape(shape)
    try:
        return int(np.count_nonzero(values == zero_point))
    except ValueError:
        return None


# --- totals --------------------------------------------------------------------------------------

def _sorted_desc(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _macs_by_op(facts: list[_NodeFacts]) -> dict[str, int]:
    by_op: dict[str, int] = {}
    for f in facts:
        if f.macs:
            by_op[f.op] = by_op.get(f.op, 0) + f.macs
    return by_op


def _sparsity_totals(facts: list[_NodeFacts]) -> dict:
    weights = {f.weight: (f.zeros, f.weight_elements) for f in facts if f.weight is not None}
    zeros = sum(z for z, _ in weights.values())
    total = sum(n for _, n in weights.values())
    return {"zero_weights": zeros, "total_weights": total, "fraction": zeros / total if total else 0.0}


def _quantized_totals(facts: list[_NodeFacts]) -> dict:
    int8 = [f.name for f in facts if f.int8 is True]
    fp32 = [f.name for f in facts if f.int8 is False]
    counted = len(int8) + len(fp32)
    return {"int8": int8, "fp32": fp32, "coverage": len(int8) / counted if counted else 0.0}


# --- text output ---------------------------------------------------------------------------------

def render_text(report: dict, console: Console) -> None:
    """Print ``report`` (from :func:`inspect_model`) as rich tables."""
    console.print(_summary_table(report))
    console.print(_histogram_table(report))
    if "top" in report:
        console.print(_top_table(report))
    if "nodes" in report:
        console.print(_nodes_table(report))


def _add_row(table: Table, *cells: str) -> None:
    # Plain text: names and shapes such as "[batch, 3]" must not be read as rich markup.
    table.add_row(*(Text(cell) for cell in cells))


def _summary_table(report: dict) -> Table:
    table = Table(title="Model", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    producer = report["producer"]
    _add_row(table, "producer", f"{producer['name'] or 'unknown'} {producer['version']}".strip())
    _add_row(table, "IR version", str(report["ir_version"]))
    _add_row(table, "opsets", ", ".join(f"{domain} {version}" for domain, version in report["opset"].items()))
    for key in ("inputs", "outputs"):
        _add_row(table, key, "\n".join(_io_text(io) for io in report[key]))
    if report["dims"]:
        _add_row(table, "symbolic dims", ", ".join(f"{name}={value}" for name, value in report["dims"].items()))
    _add_row(table, "nodes", f"{report['num_nodes']:,} ({len(report['op_histogram'])} op types)")
    _add_row(table, "parameters", _params_text(report))
    _add_row(table, "MACs", _macs_text(report))
    _add_row(table, "weight sparsity", _sparsity_text(report["sparsity"]))
    _add_row(table, "int8 coverage", _quantized_text(report["quantized_nodes"]))
    if report["shape_inference_error"]:
        _add_row(table, "shape inference", f"failed: {report['shape_inference_error']}")
    return table


def _histogram_table(report: dict) -> Table:
    table = Table(title="Operators", title_justify="left")
    table.add_column("op")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    table.add_column("MACs", justify="right")
    for op, count in report["op_histogram"].items():
        macs = report["macs_by_op"].get(op, 0)
        _add_row(table, op, f"{count:,}", f"{count / report['num_nodes']:.1%}", _count_text(macs) if macs else "")
    return table


def _top_table(report: dict) -> Table:
    table = Table(title=f"Top {len(report['top'])} nodes by MACs", title_justify="left")
    for column in ("#", "node", "op", "output", "MACs", "share"):
        table.add_column(column, justify="right" if column in ("#", "MACs", "share") else "left")
    for rank, node in enumerate(report["top"], 1):
        _add_row(table, str(rank), node["name"], node["op"], _shapes_text(node["output"]),
                      _count_text(node["macs"]), f"{node['share']:.1%}")
    return table


def _nodes_table(report: dict) -> Table:
    table = Table(title="Nodes", title_justify="left")
    for column in ("#", "node", "op", "output", "params", "MACs", "sparsity", "int8"):
        table.add_column(column, justify="right" if column in ("#", "params", "MACs", "sparsity") else "left")
    for index, node in enumerate(report["nodes"]):
        macs = "?" if node["macs"] is None else (_count_text(node["macs"]) if node["macs"] else "")
        sparsity = "" if node["sparsity"] is None else f"{node['sparsity']:.1%}"
        int8 = {True: "yes", False: "no", None: ""}[node["int8"]]
        _add_row(table, str(index), node["name"], node["op"], _shapes_text(node["output"]),
                      _count_text(node["params"]) if node["params"] else "", macs, sparsity, int8)
    return table


def _io_text(io: dict) -> str:
    text = f"{io['name']}: {io['dtype']} {_shape_text(io['shape'])}"
    if io["resolved_shape"] is not None and io["resolved_shape"] != io["shape"]:
        text += f" → {_shape_text(io['resolved_shape'])}"
    return text


def _shape_text(shape: Shape | None) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _shapes_text(shapes: list[Shape | None]) -> str:
    return " ".join(_shape_text(s) for s in shapes)


def _count_text(count: int, unit: str = "") -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if count >= factor:
            return f"{count / factor:.2f} {prefix}{unit}"
    return f"{count} {unit}".rstrip()


def _bytes_text(size: int) -> str:
    for factor, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= factor:
            return f"{size / factor:.1f} {suffix}"
    return f"{size} B"


def _params_text(report: dict) -> str:
    total = f"{_count_text(report['num_params'])} ({_bytes_text(report['param_bytes'])})"
    parts = [f"{dtype} {_count_text(e['count'])} / {_bytes_text(e['bytes'])}"
             for dtype, e in report["params_by_dtype"].items()]
    return total + (": " + ", ".join(parts) if parts else "")


def _macs_text(report: dict) -> str:
    text = f"{_count_text(report['macs'], 'MACs')} ({report['macs']:,})"
    if report["macs_unknown_nodes"]:
        text += f"; {report['macs_unknown_nodes']} nodes of unknown shape not counted"
    return text


def _sparsity_text(sparsity: dict) -> str:
    if not sparsity["total_weights"]:
        return "n/a (no constant Conv/Gemm/MatMul weights)"
    return (f"{sparsity['fraction']:.1%} ({sparsity['zero_weights']:,} of "
            f"{sparsity['total_weights']:,} weights are zero)")


def _quantized_text(quantized: dict) -> str:
    counted = len(quantized["int8"]) + len(quantized["fp32"])
    if not counted:
        return "n/a (no Conv/Gemm/MatMul nodes)"
    return f"{quantized['coverage']:.1%} ({len(quantized['int8'])} of {counted} Conv/Gemm/MatMul nodes int8)"
