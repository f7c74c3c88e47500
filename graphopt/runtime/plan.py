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
    runner: Callable[[list], None] | None = None  # the steps as one generated function (execute)


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


def _readers(steps: list[Step]) -> dict[int, list[Step]]:
    readers: dict[int, list[Step]] = {}
    for step in steps:
        for slot in step.inputs:
            readers.setdefault(slot, []).append(step)
    return readers


def fuse_elementwise_pairs(steps: list[Step], keep: set[int]) -> list[Step]:
    """Two elementwise pairs become one step (one pass, one array instead of two) when the first
    one's output has no other reader and is no graph output:

    * ``Mul(x, Sigmoid(x))`` (SiLU / Swish, either operand order): one "SiLU" step reading
      ``x``, where the Mul was, through the Sigmoid kernel's ``silu``;
    * ``Relu(Add(a, b))``: one step where the Add was, through the Add kernel's ``with_relu``.
    """
    readers = _readers(steps)
    replace: dict[int, Step] = {}   # id(step) -> the fused step standing in its place
    drop: set[int] = set()
    for step in steps:
        if len(step.outputs) != 1 or step.multi_output or step.outputs[0] in keep or id(step) in drop:
            continue
        out = step.outputs[0]
        tail = readers.get(out, [])
        if len(tail) != 1 or tail[0].multi_output or id(tail[0]) in drop or id(tail[0]) in replace:
            continue
        tail = tail[0]
        silu = getattr(step.kernel, "silu", None)
        if (step.op_type == "Sigmoid" and silu is not None and tail.op_type == "Mul"
                and len(tail.inputs) == 2 and sorted(tail.inputs) == sorted((step.inputs[0], out))
                and step.inputs[0] != out):
            drop.add(id(step))
            replace[id(tail)] = Step(tail.name, "SiLU", silu, (step.inputs[0],), tail.outputs, False)
            continue
        with_relu = getattr(step.kernel, "with_relu", None)
        if (step.op_type == "Add" and with_relu is not None and tail.op_type == "Relu"
                and tail.inputs == (out,)):
            drop.add(id(tail))
            replace[id(step)] = Step(step.name, "AddRelu", with_relu, step.inputs, tail.outputs, False)
    return [replace.get(id(s), s) for s in steps if id(s) not in drop]


_CHAIN_BINARY = {"Add": (0, 4, 4), "Sub": (1, 5, 8), "Mul": (2, 6, 6), "Div": (3, 7, 9)}
# op -> its opcodes (register op register, register op constant, constant op register); 10 is
# Clip, 11 Relu: see elementwise._chain_source


def _scalar_const(slot: int, constants: dict[int, np.ndarray]):
    value = constants.get(slot)
    if value is None or value.size != 1 or value.dtype != np.float32:
        return None
    return value


def _chain_instruction(step: Step, constants: dict[int, np.ndarray], regs: dict[int, int]):
    """``step`` as an instruction (op, a, b, c1, c2, const ndim) of an elementwise program over
    the registers ``regs`` (slot -> register), or None."""
    if step.multi_output or len(step.outputs) != 1:
        return None
    ins = step.inputs
    if step.op_type in _CHAIN_BINARY and len(ins) == 2:
        both, right, left = _CHAIN_BINARY[step.op_type]
        if ins[0] in regs and ins[1] in regs:
            return both, regs[ins[0]], regs[ins[1]], 0.0, 0.0, 0
        if ins[0] in regs and _scalar_const(ins[1], constants) is not None:
            c = constants[ins[1]]
            return right, regs[ins[0]], 0, float(c.reshape(-1)[0]), 0.0, c.ndim
        if ins[1] in regs and _scalar_const(ins[0], constants) is not None:
            c = constants[ins[0]]
            return left, regs[ins[1]], 0, float(c.reshape(-1)[0]), 0.0, c.ndim
        return None
    if step.op_type == "Relu" and len(ins) == 1 and ins[0] in regs:
        return 11, regs[ins[0]], 0, 0.0, 0.0, 0
    if step.op_type == "Clip" and 2 <= len(ins) <= 3 and ins[0] in regs:
        bounds = [ins[k] if k < len(ins) else 0 for k in (1, 2)]
        values = [None if b == 0 else _scalar_const(b, constants) for b in bounds]
        if any(b != 0 and v is None for b, v in zip(bounds, values)) or all(b == 0 for b in bounds):
            return None
        lo = -np.inf if values[0] is None else float(values[0].reshape(-1)[0])
        hi = np.inf if values[1] is None else float(values[1].reshape(-1)[0])
        ndim = max([v.ndim for v in values if v is not None])
        return 10, regs[ins[0]], 0, lo, hi, ndim
    return None


def fuse_elementwise_chains(steps: list[Step], constants: dict[int, np.ndarray], keep: set[int]) -> list[Step]:
    """A run of consecutive float elementwise steps (Add / Sub / Mul / Div, Clip, Relu) over one
    tensor and one-value constants, each intermediate read only inside the run, becomes one step:
    one generated loop that keeps each element in registers through all the ops (see
    ``elementwise.chain_kernel``), with the roundings of the separate steps. Intermediates read
    elsewhere or kept as graph outputs end a run; the chain's threads are its members' most."""
    from graphopt.runtime.ops.elementwise import chain_kernel
    readers: dict[int, set[int]] = {}
    for index, step in enumerate(steps):
        for slot in step.inputs:
            readers.setdefault(slot, set()).add(index)
    fused, i = [], 0
    while i < len(steps):
        first = steps[i]
        roots = [s for s in first.inputs if s and s not in constants]
        run = []
        if roots and all(r == roots[0] for r in roots) and roots[0] > 1:
            regs = {roots[0]: 0}
            for j in range(i, len(steps)):
                instruction = _chain_instruction(steps[j], constants, regs)
                if instruction is None or steps[j].outputs[0] in regs:
                    break
                regs[steps[j].outputs[0]] = len(regs)
                run.append(instruction)
        # the longest prefix whose intermediates are read only inside it
        length = len(run)
        while length >= 2 and not all(
                steps[k].outputs[0] not in keep and steps[k].outputs[0] > 1
                and all(i <= r < i + length for r in readers.get(steps[k].outputs[0], ()))
                for k in range(i, i + length - 1)):
            length -= 1
        if length < 2:
            fused.append(first)
            i += 1
            continue
        members = steps[i:i + length]
        threads = max(getattr(s.kernel, "threads", 1) for s in members)
        kernel = chain_kernel(run[:length], [(s.kernel, s.inputs, s.outputs[0]) for s in members],
                              roots[0], constants, threads)
        fused.append(Step(members[-1].name, "ElementwiseChain", kernel, (roots[0],), members[-1].outputs, False))
        i += length
    return fused


def _silu_in_place(silu):
    return lambda y: silu(y, out=y)


def fuse_activation_tails(steps: list[Step], constants: dict[int, np.ndarray], keep: set[int]) -> list[Step]:
    """Conv/Gemm/MatMul followed by its only reader, a Relu or a Clip, become one step: the
    activation goes into the epilogue of a kernel that offers it (``kernel.fuse_activation``),
    else is applied in place on the product (no second array to allocate). A fused SiLU (see
    :func:`fuse_elementwise_pairs`, run first) as that reader is applied in place on the product.
    Before opset 11 Clip takes attributes: those nodes are left alone."""
    steps = fuse_elementwise_pairs(fuse_elementwise_chains(steps, constants, keep), keep)
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
        if (activation is None and len(tail) == 1 and tail[0].op_type == "SiLU" and tail[0].inputs == (out,)
                and not step.multi_output):
            absorbed.add(id(tail[0]))
            kernel = _then(step.kernel, _silu_in_place(tail[0].kernel))
            fused.append(Step(step.name, step.op_type, kernel, step.inputs, tail[0].outputs, False))
            continue
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
    """Run the plan's steps over ``values`` (a list indexed by slot), in place: every slot that
    no step releases holds its value afterwards (the outputs; the rest are not written back)."""
    if plan.runner is None:
        plan.runner = _generate(plan)
    plan.runner(values)


def _generate(plan: Plan) -> Callable[[list], None]:
    """The plan's steps as straight-line Python: slots become local variables, kernels default
    arguments, a release a ``del``. A loop over the steps spends ~0.5 µs a step indexing lists and
    unpacking tuples; this code spends a call and a store (transformers have hundreds of small steps)."""
    kernels, body, loaded, written = [], [], set(), set()

    def read(slot):
        if slot == 0:
            return "None"
        if slot not in written and slot not in loaded:
            loaded.add(slot)
            body.insert(0, f"    s{slot} = values[{slot}]")
        return f"s{slot}"

    for index, (kernel, inputs, outputs, multi_output, releases) in enumerate(plan.steps):
        kernels.append(f"k{index}=k{index}")
        call = f"k{index}({', '.join(read(i) for i in inputs)})"
        if multi_output:
            body.append(f"    r = {call}")
            body.extend(f"    s{slot} = r[{k}]" for k, slot in enumerate(outputs) if slot != 1)
        else:
            body.append(f"    {'_' if outputs[0] == 1 else f's{outputs[0]}'} = {call}")
        written.update(s for s in outputs if s != 1)
        if releases:
            body.append(f"    del {', '.join(f's{slot}' for slot in releases)}")
    released = {slot for *_, releases in plan.steps for slot in releases}
    body.extend(f"    values[{slot}] = s{slot}" for slot in sorted(written - released))
    source = f"def run(values, {', '.join(kernels)}):\n" + "\n".join(body or ["    pass"]) + "\n"
    namespace = {f"k{index}": step[0] for index, step in enumerate(plan.steps)}
    exec(compile(source, "<graphopt plan>", "exec"), namespace)
    return namespace["run"]


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
