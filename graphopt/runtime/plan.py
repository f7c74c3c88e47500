"""A compiled plan: the graph as a flat list of steps over numbered value slots.

Each step is a prebound kernel, the slots it reads and writes, and the slots whose last reader it
is (released after it runs, so that numpy can reuse their memory for later tensors). A plan is
made per input-shape signature: values that depend only on the input shapes (``Shape → Gather →
Concat → Reshape`` chains) are computed once for the signature and become constants of its plan.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

# Ops whose output *shape* depends on the *values* of these inputs (not just their shapes).
SHAPE_FROM_VALUES = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Range": (0, 1, 2), "ConstantOfShape": (0,),
    "Slice": (1, 2, 3, 4), "TopK": (1,), "Resize": (1, 2, 3), "Pad": (1, 2, 3), "Squeeze": (1,),
    "Unsqueeze": (1,), "Split": (1,), "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,),
    "ReduceMin": (1,),
}


@dataclasses.dataclass
class Step:
    name: str
    op_type: str
    kernel: Callable[..., Any]
    inputs: tuple[int, ...]   # slot numbers; slot 0 always holds None (an omitted input)
    outputs: tuple[int, ...]  # slot 1 (a discard slot) for an output nothing reads
    multi_output: bool


@dataclasses.dataclass
class Plan:
    steps: list[tuple]       # (kernel, inputs, outputs, multi_output, releases) per step
    names: list[str]         # node name of each step, for profiles and errors
    constants: dict[int, np.ndarray]
    shapes: dict[str, tuple[int, ...]]  # every tensor's shape in this signature, by name


def prepacked_inputs(kernel) -> tuple[int, ...]:
    """The input positions whose constant value ``kernel`` copied what it needs from when it was
    built (packed weights, a transposed matrix) and never reads again: a kernel declares them
    as ``kernel.prepacked_inputs = (1,)`` (an attribute of the function or of the kernel's
    class). The session then passes it None there, clears them from the node's ``consts`` and
    keeps a constant only while some other step reads it, so a packed weight is held once."""
    return tuple(getattr(kernel, "prepacked_inputs", None) or ())


# Ops whose kernels return a new array that nothing else references: a tail may overwrite it.
FRESH_OUTPUT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def _tail_activation(step: Step, constants: dict[int, np.ndarray]):
    """A Relu step as ("relu",), a Clip with constant bounds as ("clip", lo, hi) (None: no
    bound), anything else None."""
    if step.op_type == "Relu":
        return ("relu",)
    if step.op_type == "Clip" and all(i == 0 or i in constants for i in step.inputs[1:]):
        bounds = [constants.get(i) for i in step.inputs[1:3]] + [None] * (3 - len(step.inputs))
        if bounds[0] is None and bounds[1] is None:
            return None
        return ("clip", bounds[0], bounds[1])
    return None


def _in_place(activation):
    """The activation applied in place on a product's fresh output array."""
    if activation[0] == "relu":
        return lambda y: np.maximum(y, y.dtype.type(0), out=y)
    return lambda y: np.clip(y, activation[1], activation[2], out=y)


def fuse_activation_tails(steps: list[Step], constants: dict[int, np.ndarray], keep: set[int]) -> list[Step]:
    """Conv/Gemm/MatMul followed by its only reader, a Relu or a Clip, become one step: the
    activation goes into the epilogue of a kernel that offers it (``kernel.fuse_activation``),
    else is applied in place on the product (no second array to allocate).
    Before opset 11 Clip takes attributes: those nodes are left alone."""
    readers: dict[int, list[Step]] = {}
    for step in steps:
        for slot in step.inputs:
            readers.setdefault(slot, []).append(step)
    fused, absorbed = [], set()
    for step in steps:
        if id(step) in absorbed:
            continue
        out = step.outputs[0] if len(step.outputs) == 1 else None
        tail = readers.get(out, []) if step.op_type in FRESH_OUTPUT_OPS and out not in keep else []
        activation = _tail_activation(tail[0], constants) if len(tail) == 1 and tail[0].inputs[0] == out else None
        if activation is None or step.multi_output or tail[0].multi_output:
            fused.append(step)
            continue
        absorbed.add(id(tail[0]))
        # a compiled kernel takes the activation into its epilogue; others apply it in place after
        epilogue = getattr(step.kernel, "fuse_activation", None)
        kernel = epilogue(activation) if epilogue is not None else _then(step.kernel, _in_place(activation))
        fused.append(Step(step.name, step.op_type, kernel, step.inputs, tail[0].outputs, False))
    return fused


def _then(kernel, activation):
    return lambda *args: activation(kernel(*args))


def shape_dependent(steps: list[Step], inputs: set[int], constants: set[int]) -> set[int]:
    """Slots whose value is fixed once the input shapes are: computable at plan compilation."""
    shape_known = set(inputs) | set(constants)
    value_known = set(constants)
    for step in steps:
        ins = [i for i in step.inputs if i]
        if step.op_type in ("Shape", "Size") and all(i in shape_known for i in ins):
            value_known.update(step.outputs)
        elif all(i in value_known for i in ins):
            value_known.update(step.outputs)
        shaped_by = SHAPE_FROM_VALUES.get(step.op_type, ())
        if all(i in shape_known for i in ins) and all(
                step.inputs[k] in value_known or step.inputs[k] == 0
                for k in shaped_by if k < len(step.inputs)):
            shape_known.update(step.outputs)
    value_known.discard(1)
    return value_known - set(constants)


def compile_plan(steps: list[Step], constants: dict[int, np.ndarray], keep: set[int]) -> Plan:
    """A plan running ``steps`` with ``constants`` preset; ``keep`` slots are never released."""
    last_use: dict[int, int] = {}
    for index, step in enumerate(steps):
        for slot in step.inputs:
            last_use[slot] = index
        for slot in step.outputs:
            last_use.setdefault(slot, index)  # an output nobody reads is released at once
    releases: list[list[int]] = [[] for _ in steps]
    for slot, index in last_use.items():
        if slot > 1 and slot not in keep and slot not in constants:
            releases[index].append(slot)
    compiled = [(s.kernel, s.inputs, s.outputs, s.multi_output, tuple(releases[i])) for i, s in enumerate(steps)]
    return Plan(compiled, [s.name for s in steps], dict(constants), {})


def execute(plan: Plan, values: list) -> None:
    """Run the plan's steps over ``values`` (a list indexed by slot), in place."""
    for kernel, inputs, outputs, multi_output, releases in plan.steps:
        result = kernel(*[values[i] for i in inputs])
        if multi_output:
            for slot, value in zip(outputs, result):
                values[slot] = value
        else:
            values[outputs[0]] = result
        for slot in releases:
            values[slot] = None


def execute_recording(plan: Plan, values: list, slot_names: list[str]) -> dict[str, tuple[int, ...]]:
    """:func:`execute`, also returning the shape of every tensor the steps produce."""
    shapes = {}
    for kernel, inputs, outputs, multi_output, releases in plan.steps:
        result = kernel(*[values[i] for i in inputs])
        for slot, value in zip(outputs, result if multi_output else (result,)):
            values[slot] = value
            if slot > 1:
                shapes[slot_names[slot]] = np.shape(value)
        for slot in releases:
            values[slot] = None
    return shapes
