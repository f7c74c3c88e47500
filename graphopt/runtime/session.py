"""``Session``: graphopt's own backend, with onnxruntime's API shape.

At creation the model is checked for ops and attribute values the runtime lacks (all reported at
once), QDQ groups are lowered to int8 kernel calls, weights are packed, constant subgraphs are
folded and every node gets its prebound kernel. At the first ``run`` with a new input-shape
signature the graph is compiled into a :class:`~graphopt.runtime.plan.Plan`; later runs with the
same shapes reuse it.

Memory: the weights become numpy arrays before the ONNX checker runs (which then sees empty
stand-ins, not a serialized copy of every weight), the model's protobuf is released before any
kernel packs its copies, a constant quantized table read by Gather stays quantized, and a
constant that a kernel declares prepacked (``plan.prepacked_inputs``) is dropped once no other
node reads it. Peak memory is about twice the weights (the parsed file and its arrays).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.errors import InputSpecError, UnsupportedModelError
from graphopt.feeds import InputSpec, value_info_spec
from graphopt.model_io import check_model, check_versions, load_model
from graphopt.runtime import plan as plans
from graphopt.runtime.lowering import drop_unused, lower_qdq
from graphopt.runtime.ops import OPS, NodeSpec, Unsupported
from graphopt.runtime.ops.tensor import NUMERIC_TYPES, constant_value, type_name

_DEFAULT_DOMAINS = ("", "ai.onnx")
_MAX_LISTED = 50
# ops whose kernels call numpy's BLAS (fp32 products, the exact integer fallbacks)
_BLAS_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Int8MatMul", "MatMulInteger", "ConvInteger",
             "QLinearConv", "QLinearMatMul"}


@dataclasses.dataclass
class NodeArg:
    """An input or output of the model, as onnxruntime's ``NodeArg`` describes it."""
    name: str
    shape: list[int | str | None]
    type: str


def _node_arg(spec: InputSpec, elem_type: int) -> NodeArg:
    # onnxruntime's spelling: tensor(float), tensor(int64), tensor(uint8), ...
    name = onnx.TensorProto.DataType.Name(elem_type or onnx.TensorProto.FLOAT).lower()
    return NodeArg(spec.name, list(spec.dims), f"tensor({name})")


def _single_threaded_blas():
    """A context running numpy's BLAS on one thread: the kernels split products over the
    session's threads themselves (see ``graphopt.runtime.ops.nn.matmul``)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # threadpoolctl is optional: without it BLAS keeps its own setting
        return contextlib.nullcontext
    # ThreadpoolController.limit re-reads every library's info on each entry (~11 us a run);
    # the BLAS controllers are looked up once here and each run only gets and sets thread counts
    blas = ThreadpoolController().select(user_api="blas").lib_controllers
    if not blas:
        return contextlib.nullcontext

    @contextlib.contextmanager
    def limit():
        previous = [lib.get_num_threads() for lib in blas]
        for lib, count in zip(blas, previous):
            if count != 1:
                lib.set_num_threads(1)
        try:
            yield
        finally:
            for lib, count in zip(blas, previous):
                if count != 1:
                    lib.set_num_threads(count)
    return limit


def _attribute(attr: onnx.AttributeProto):
    value = onnx.helper.get_attribute_value(attr)
    return value.decode() if isinstance(value, bytes) else value


def _listing(problems: list[str]) -> str:
    shown = problems[:_MAX_LISTED]
    if len(problems) > _MAX_LISTED:
        shown.append(f"... and {len(problems) - _MAX_LISTED} more")
    return "; ".join(shown)


# element types whose raw bytes numpy_helper.to_array reads as they are (frombuffer + reshape)
_PLAIN_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _take_weights(graph: onnx.GraphProto, stub: bool) -> dict[str, np.ndarray]:
    """The initializers stored as raw bytes of a numeric type, as numpy arrays. With ``stub``
    each one converted is left in ``graph`` as an empty tensor of the same name and type (dims
    ``[0]``): the ONNX checker, run afterwards, then neither copies nor parses the weights. Only
    tensors that the checker could not have rejected are converted (raw data alone, of exactly
    the declared size, stored in the file); the others stay for the checker and ``to_array``."""
    consts = {}
    for tensor in graph.initializer:
        if (tensor.data_type not in NUMERIC_TYPES or not tensor.HasField("raw_data")
                or tensor.HasField("segment") or tensor.data_location == onnx.TensorProto.EXTERNAL
                or any(len(getattr(tensor, field)) for field in _PLAIN_FIELDS)):
            continue
        try:
            value = numpy_helper.to_array(tensor)
        except ValueError:  # raw data of another size than the dims say: the checker reports it
            continue
        consts[tensor.name] = value
        if stub:
            tensor.ClearField("raw_data")
            del tensor.dims[:]
            tensor.dims.append(0)
    return consts


def _gather_then_dequantize(specs: list[NodeSpec], consts: dict[str, np.ndarray],
                            graph_outputs: set[str]) -> list[NodeSpec]:
    """``Gather(DequantizeLinear(table))`` of a constant table with a per-tensor scale and zero
    point becomes ``DequantizeLinear(Gather(table))``: the same values (dequantizing maps each
    element alone), but the table stays as the file stores it instead of being folded into a
    float copy 4x its size (bert's word embeddings: 7.5 MiB of uint8 instead of 30 MiB)."""
    readers: dict[str, list[tuple[NodeSpec, int]]] = defaultdict(list)
    names = set(consts)
    for spec in specs:
        names.update(spec.outputs)
        for index, name in enumerate(spec.inputs):
            if name:
                readers[name].append((spec, index))
                names.add(name)
    rewritten: dict[int, list[NodeSpec]] = {}
    for dq in specs:
        if dq.op_type != "DequantizeLinear" or dq.inputs[0] not in consts or dq.attr("block_size", 0):
            continue
        table, out = consts[dq.inputs[0]], dq.outputs[0]
        scale = consts.get(dq.inputs[1]) if dq.has_input(1) else None
        zero_point = consts.get(dq.inputs[2]) if dq.has_input(2) else None
        users = readers.get(out, [])
        if (table.dtype not in (np.uint8, np.int8) or scale is None or scale.ndim != 0
                or (dq.has_input(2) and (zero_point is None or zero_point.ndim != 0))
                or out in graph_outputs or not users or any(u.op_type != "Gather" or k != 0 for u, k in users)):
            continue
        for gather, _ in users:
            gathered = gather.outputs[0] + "_quantized"
            while gathered in names:
                gathered += "_"
            names.add(gathered)
            rewritten[id(gather)] = [
                dataclasses.replace(gather, inputs=[dq.inputs[0]] + gather.inputs[1:], outputs=[gathered]),
                dataclasses.replace(dq, name=f"{dq.name}/{gather.name}", inputs=[gathered] + dq.inputs[1:],
                                    outputs=list(gather.outputs))]
        rewritten[id(dq)] = []
    if not rewritten:
        return specs
    return [new for spec in specs for new in rewritten.get(id(spec), [spec])]


def _topological(specs: list[NodeSpec], available: set[str]) -> list[NodeSpec]:
    """Nodes in an order where each runs after its producers (ONNX requires it; not every
    in-memory model honours it). Nodes that can never run are left at the end, in file order."""
    ordered, waiting, known = [], list(specs), set(available) | {""}
    while waiting:
        ready = [s for s in waiting if all(i in known for i in s.inputs)]
        if not ready:
            return ordered + waiting
        for spec in ready:
            known.update(spec.outputs)
        ordered += ready
        ready_ids = {id(s) for s in ready}
        waiting = [s for s in waiting if id(s) not in ready_ids]
    return ordered


class Session:
    """Run an ONNX model on graphopt's runtime: ``Session(path_or_model, threads=1)``."""

    def __init__(self, path_or_model: str | os.PathLike | onnx.ModelProto | bytes, threads: int = 1):
        if threads < 1:
            raise InputSpecError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        model, checked_at, owned = self._load(path_or_model)
        graph = model.graph
        self._opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 1)
        # the weights become numpy arrays before the ONNX checker runs: a model the session parsed
        # itself gives them up (see _take_weights), so the checker's serialized copy and its C++
        # parse carry none of them, and the model's weights exist at most twice (proto + arrays)
        consts = _take_weights(graph, stub=owned)
        if checked_at is not None:
            check_model(model, checked_at)
        self._check_types(graph)
        consts.update({t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name not in consts})
        self._input_specs = [value_info_spec(i) for i in graph.input if i.name not in consts]
        self._input_types = {i.name: i.type.tensor_type.elem_type for i in graph.input}
        self._input_dtypes: dict[str, np.dtype] = {}  # filled at the first run, per input
        self._inputs = [_node_arg(s, self._input_types[s.name]) for s in self._input_specs]
        self._outputs = [_node_arg(value_info_spec(o), o.type.tensor_type.elem_type) for o in graph.output]
        self._output_names = [o.name for o in graph.output]
        specs = _topological(self._node_specs(graph, consts), set(consts) | {s.name for s in self._input_specs})
        # nothing below reads the model: its protobuf (weights included when the caller passed
        # its own ModelProto) is not kept while kernels pack their copies
        del model, graph
        outputs = set(self._output_names)
        specs = self._fold_constants(specs, consts)
        specs, self.lowered = lower_qdq(specs, consts, outputs)
        specs = drop_unused(specs, outputs)
        specs = _gather_then_dequantize(specs, consts, outputs)
        # what lowering left of the DequantizeLinear nodes of constants (weights of products it
        # could not lower) is dequantized here, so that those ops are built with constant weights
        specs = self._fold_constants(specs, consts, keep_dequantize=False)
        self._build(specs, consts)
        self._plans: dict[tuple, plans.Plan] = {}
        # the compiled fp32 products (which declare their packed weights) never call BLAS
        uses_blas = any(step.op_type in _BLAS_OPS and not plans.prepacked_inputs(step.kernel)
                        for step in self._steps)
        self._input_names = [s.name for s in self._input_specs]
        # (dtype, shape) per input, of feeds already validated -> their shape signature
        self._checked: dict[tuple, tuple] = {}
        # setting BLAS's thread count costs ~15 us a run: only graphs that call BLAS pay it
        self._blas_limit = _single_threaded_blas() if uses_blas else contextlib.nullcontext

    # ---- creation ---------------------------------------------------------------------------
    @staticmethod
    def _load(source) -> tuple[onnx.ModelProto, Path | None, bool]:
        """(model, the path to name in the ONNX checker's errors or None when it does not run,
        whether the model is the session's own to strip of its weights)."""
        if isinstance(source, onnx.ModelProto):
            check_versions(source)
            return source, None, False
        if isinstance(source, bytes):
            model = onnx.ModelProto()
            model.ParseFromString(source)
            check_versions(model)
            return model, None, True
        # load_model(source) would run the checker here, on a serialized copy of every weight
        return load_model(source, check=False), Path(source), True

    @staticmethod
    def _check_types(graph: onnx.GraphProto) -> None:
        problems = []
        for info in list(graph.input) + list(graph.output):
            kind = info.type.WhichOneof("value")
            if kind is None and info in graph.output:
                continue  # an output without a declared type gets the one its producer computes
            if kind != "tensor_type":
                problems.append(f"{info.name}: a {kind or 'untyped'} value (only tensors are supported)")
            elif info.type.tensor_type.elem_type not in NUMERIC_TYPES:
                problems.append(f"{info.name}: element type {type_name(info.type.tensor_type.elem_type)}")
        for tensor in graph.initializer:
            if tensor.data_type not in NUMERIC_TYPES:
                problems.append(f"initializer {tensor.name}: element type {type_name(tensor.data_type)}")
        if problems:
            raise UnsupportedModelError("graphopt's runtime cannot run this model: " + _listing(problems),
                                        "run it with --backend onnxruntime")

    def _node_specs(self, graph: onnx.GraphProto, consts: dict[str, np.ndarray]) -> list[NodeSpec]:
        specs, problems = [], []
        for index, node in enumerate(graph.node):
            name = node.name or f"{node.op_type}_{index}"
            if node.domain not in _DEFAULT_DOMAINS:
                problems.append(f"{name} ({node.domain}.{node.op_type}: custom domain)")
                continue
            attrs = {a.name: _attribute(a) for a in node.attribute}
            spec = NodeSpec(name, node.op_type, list(node.input), list(node.output), attrs,
                            [consts.get(i) if i else None for i in node.input], self._opset, self.threads)
            if node.op_type == "Constant":
                try:
                    consts[node.output[0]] = constant_value(spec)
                except Unsupported as exc:
                    problems.append(f"{name} (Constant: {exc})")
                continue
            specs.append(spec)
        self._raise_if(problems)
        return specs

    @staticmethod
    def _raise_if(problems: list[str]) -> None:
        if not problems:
            return
        raise UnsupportedModelError(
            f"graphopt's runtime does not support {len(problems)} node(s): " + _listing(problems),
            "run the model with --backend onnxruntime, or file an issue naming the op")

    def _build(self, specs: list[NodeSpec], consts: dict[str, np.ndarray]) -> None:
        """Give every node its kernel and a slot per tensor; fold what is constant."""
        kernels, problems = [], []
        lowered = {id(g.spec): g.kernel for g in self.lowered if g.kernel is not None}
        # constant inputs a kernel prepacked (plans.prepacked_inputs) are not read at run time:
        # each is dropped as soon as no node left to build reads it, before the next kernel
        # packs its own copy
        readers: dict[str, int] = defaultdict(int)
        for spec in specs:
            for name in spec.inputs:
                if name in consts:
                    readers[name] += 1
        prepacked: list[set[int]] = []
        for spec in specs:
            if id(spec) in lowered:
                kernel, multi = lowered[id(spec)], False
            else:
                op = OPS.get(spec.op_type)
                if op is None:
                    problems.append(f"{spec.name} ({spec.op_type}: op not implemented)")
                    continue
                try:
                    kernel, multi = op.build(spec), op.multi_output
                except Unsupported as exc:
                    problems.append(f"{spec.name} ({spec.op_type}: {exc})")
                    continue
            kernels.append((kernel, multi))
            packed = {k for k in plans.prepacked_inputs(kernel)
                      if 0 <= k < len(spec.inputs) and spec.inputs[k] in consts}
            prepacked.append(packed)
            for k in packed:
                name = spec.inputs[k]
                spec.consts[k] = None
                readers[name] -= 1
                if readers[name] == 0 and name not in self._output_names:
                    del consts[name]
        self._raise_if(problems)
        # slot 0: an omitted optional input (always None); slot 1: outputs nothing reads
        slots: dict[str, int] = {"": 0}
        self._slot_names = ["", "<discard>"]

        def slot(name: str) -> int:
            if name not in slots:
                slots[name] = len(self._slot_names)
                self._slot_names.append(name)
            return slots[name]

        used = {i for s, packed in zip(specs, prepacked) for k, i in enumerate(s.inputs)
                if i and k not in packed} | set(self._output_names)
        for name in [s.name for s in self._input_specs] + self._output_names:
            slot(name)
        steps = []
        for spec, (kernel, multi), packed in zip(specs, kernels, prepacked):
            ins = tuple(slot(i) if i and k not in packed else 0 for k, i in enumerate(spec.inputs))
            outs = tuple(slot(o) if o and o in used else 1 for o in spec.outputs)
            steps.append(plans.Step(spec.name, spec.op_type, kernel, ins, outs, multi))
        self._slots = slots
        self._consts = {slots[n]: v for n, v in consts.items() if n in slots}
        self._steps = plans.fuse_activation_tails(steps, self._consts, {slots[n] for n in self._output_names})
        self._input_slots = [slots[s.name] for s in self._input_specs]
        self._output_slots = {n: slots[n] for n in self._output_names}

    @staticmethod
    def _fold_constants(specs: list[NodeSpec], consts: dict[str, np.ndarray],
                        keep_dequantize: bool = True) -> list[NodeSpec]:
        """Compute, once, the nodes whose inputs are all constant (weights that the file stores
        as float and quantizes with a QuantizeLinear node, shape arithmetic): lowering then sees
        int8 weights, and the plan never runs these nodes. ``keep_dequantize``: a DequantizeLinear
        of a constant stays (before lowering, which reads it as the mark of a quantized tensor)."""
        remaining = []
        for spec in specs:
            spec.consts = [consts.get(i) if i else None for i in spec.inputs]
            op = OPS.get(spec.op_type)
            # DequantizeLinear nodes stay: they mark the quantized tensors that lowering reads
            marker = keep_dequantize and spec.op_type == "DequantizeLinear"
            if op is None or marker or not all(i == "" or i in consts for i in spec.inputs):
                remaining.append(spec)
                continue
            try:
                kernel = op.build(spec)
            except Unsupported:
                remaining.append(spec)  # reported with the others when the plan is built
                continue
            result = kernel(*spec.consts)
            for name, value in zip(spec.outputs, result if op.multi_output else (result,)):
                if name:
                    consts[name] = np.asarray(value)
        return remaining

    # ---- onnxruntime's API ------------------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray], run_options=None) -> list[np.ndarray]:
        """The outputs named (all when None), in that order, for ``feeds`` (input name → array).

        ``run_options`` is accepted, and ignored, for onnxruntime's call signature.
        """
        names = self._output_names
        if output_names:
            names = list(output_names)
            unknown = [n for n in names if n not in self._output_slots]
            if unknown:
                raise InputSpecError(f"unknown output name(s): {', '.join(unknown)}",
                                     f"the model's outputs: {', '.join(self._output_names)}")
        arrays, signature = self._check_feeds(feeds)
        with self._blas_limit():
            plan = self._plans.get(signature)
            if plan is None:
                values = self._compile(signature, arrays)
            else:
                values = self._values(plan, arrays)
                plans.execute(plan, values)
        return [self._owned(values[self._output_slots[n]]) for n in names]

    @staticmethod
    def _owned(value):
        # a view of a weight or an input must not let the caller write into the session
        value = np.asarray(value)
        return value if value.base is None and value.flags.writeable else np.array(value)

    def _values(self, plan: plans.Plan, arrays: list[np.ndarray]) -> list:
        template = getattr(plan, "template", None)
        if template is None:  # the plan's constants in their slots, made once per plan
            template = [None] * len(self._slot_names)
            for slot, value in plan.constants.items():
                template[slot] = value
            plan.template = template
        values = template.copy()
        for slot, value in zip(self._input_slots, arrays):
            values[slot] = value
        return values

    def _compile(self, signature: tuple, arrays: list[np.ndarray]) -> list:
        """Make the plan of a new input-shape signature, running the graph once to do so.

        The run records every tensor's shape and the values that depend only on the input
        shapes; those become constants of the plan, and the steps computing them leave it.
        Returns the values of that run.
        """
        keep = set(self._output_slots.values())
        frozen = plans.shape_dependent(self._steps, set(self._input_slots), set(self._consts))
        probe = plans.compile_plan(self._steps, self._consts, keep | frozen)
        values = self._values(probe, arrays)
        shapes = plans.execute_recording(probe, values, self._slot_names)
        constants = dict(self._consts)
        constants.update({s: values[s] for s in frozen if values[s] is not None})
        steps = [s for s in self._steps if not all(o in frozen or o == 1 for o in s.outputs)]
        plan = plans.compile_plan(steps, constants, keep)
        plan.shapes = shapes
        self._plans[signature] = plan
        return values

    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], tuple]:
        """The input arrays in the model's order, and their shapes (the plan's signature)."""
        if type(feeds) is dict and len(feeds) == len(self._input_names):
            # fast path (a small model's run is ~15 us): arrays of names, dtypes and shapes validated before
            arrays, key = [], []
            for name in self._input_names:
                array = feeds.get(name)
                if type(array) is not np.ndarray:
                    break
                arrays.append(array)
                key.append((array.dtype, array.shape))
            else:
                signature = self._checked.get(tuple(key))
                if signature is not None:
                    return arrays, signature
        arrays = self._validated_feeds(feeds)
        signature = tuple(a.shape for a in arrays)
        self._checked[tuple((a.dtype, a.shape) for a in arrays)] = signature
        return arrays, signature

    def _validated_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not isinstance(feeds, dict):
            raise InputSpecError("feeds must be a dict of input name to array")
        expected = [s.name for s in self._input_specs]
        unknown = sorted(set(feeds) - set(expected))
        missing = [n for n in expected if n not in feeds]
        if unknown or missing:
            parts = ([f"unknown input(s) {', '.join(unknown)}"] if unknown else []) + \
                    ([f"missing input(s) {', '.join(missing)}"] if missing else [])
            raise InputSpecError("; ".join(parts), f"the model's inputs: {', '.join(expected) or '(none)'}")
        arrays, symbols = [], defaultdict(set)
        for spec in self._input_specs:
            value = np.asarray(feeds[spec.name])
            dtype = self._input_dtypes.get(spec.name)
            if dtype is None:
                dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self._input_types[spec.name]))
                self._input_dtypes[spec.name] = dtype
            if value.dtype != dtype:
                raise InputSpecError(f"input {spec.name}: expected {dtype}, got {value.dtype}",
                                     f"convert it, e.g. x.astype(np.{dtype})")
            if spec.dims and len(spec.dims) != value.ndim:
                raise InputSpecError(f"input {spec.name}: expected rank {len(spec.dims)} "
                                     f"{spec.shape_text()}, got shape {list(value.shape)}")
            for want, got in zip(spec.dims, value.shape):
                if isinstance(want, int) and want >= 0 and want != got:
                    raise InputSpecError(f"input {spec.name}: expected shape {spec.shape_text()}, "
                                         f"got {list(value.shape)}")
                if isinstance(want, str):
                    symbols[want].add(got)
            arrays.append(value)
        clashes = {k: sorted(v) for k, v in symbols.items() if len(v) > 1}
        if clashes:
            name, sizes = next(iter(clashes.items()))
            raise InputSpecError(f"symbolic dim {name} has different sizes across inputs: {sizes}")
        return arrays
