"""Elementwise ops with numpy broadcasting: arithmetic, comparisons, logic, activations."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
import sys
import tempfile

import numpy as np

from graphopt.kernels import glue
from graphopt.runtime.ops import NodeSpec, numba_fp32, refuse, register


def _float_loop(loop):
    """A float32/float64 Numba loop applied to any float dtype (float16 goes through float32)."""
    def apply(x):
        if x.dtype in (np.float32, np.float64):
            return loop(x)
        return loop(x.astype(np.float32)).astype(x.dtype)
    return apply


erf = _float_loop(numba_fp32.erf)


def _int_divide(x, y):
    # ONNX integer Div truncates toward zero (C semantics); numpy's // floors.
    q = np.floor_divide(x, y)
    adjust = (np.remainder(x, y) != 0) & ((x < 0) ^ (y < 0))
    return q + adjust.astype(q.dtype)


def _divide(x, y):
    if x.dtype.kind in "iu":
        return _int_divide(x, y)
    return np.divide(x, y)


def _power(x, y):
    if x.dtype.kind in "iu" and y.dtype.kind in "iu":
        return np.power(x, y.astype(x.dtype))
    if x.dtype.kind == "f" and y.dtype != x.dtype:
        y = y.astype(x.dtype)
    return np.power(x, y).astype(x.dtype, copy=False)


_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _divide, "Pow": _power,
    "Equal": np.equal, "Less": np.less, "Greater": np.greater, "And": np.logical_and,
}


# Below this many elements an elementwise op stays in one thread: a hand-off to a worker and
# back costs ~20-30 us, numpy adds 512K float32 values in ~75 us (measured on 2 cores: at 256K
# the split is about even, at 1M it saves ~25%).
PARALLEL_MIN = 1 << 19

# op -> (same-shape loop, loop with the second operand one value, the first operand one value
# if the op commutes)
_LOOPS = {
    "Add": (numba_fp32._add, numba_fp32._add_scalar, True),
    "Mul": (numba_fp32._mul, numba_fp32._mul_scalar, True),
    "Sub": (numba_fp32._sub, numba_fp32._sub_scalar, False),
    "Div": (numba_fp32._div, numba_fp32._div_scalar, False),
}


def _chunked(loop, threads, out, x, *extra, min_size=None):
    """``loop(chunk of x, *extra, chunk of out)`` over flat arrays split among ``threads``
    (``threads`` 1 or fewer than ``min_size`` elements, default :data:`PARALLEL_MIN`: one
    call); the same values either way (every element computed alike)."""
    if threads <= 1 or out.shape[0] < (PARALLEL_MIN if min_size is None else min_size):
        loop(x, *extra, out)
        return
    glue.run_chunks(lambda first, last: loop(x[first:last], *extra, out[first:last]),
                    out.shape[0], threads, 16)


def _chunked2(loop, threads, out, a, b):
    """:func:`_chunked` for a loop over two same-length flat arrays."""
    if threads <= 1 or out.shape[0] < PARALLEL_MIN:
        loop(a, b, out)
        return
    glue.run_chunks(lambda first, last: loop(a[first:last], b[first:last], out[first:last]),
                    out.shape[0], threads, 16)


# Sigmoid / SiLU cost ~0.3 ns an element (an exp and a division): splitting pays from here on
PARALLEL_MIN_EXP = 1 << 17


def unary_loop(loop, threads: int, x, *extra, out=None, min_size=None):
    """``loop`` (a flat Numba kernel ``loop(x, *extra, out)``) over float ``x``, split among
    ``threads`` when big; returns ``out`` (a new array unless given: it may be ``x``)."""
    x = np.ascontiguousarray(x)
    if out is None:
        out = np.empty(x.shape, x.dtype)
    if x.size:
        _chunked(loop, threads, out.reshape(-1), x.reshape(-1), *extra, min_size=min_size)
    return out


def parallel_binary(op_type: str, threads: int, fallback=None):
    """A float32 binary kernel that splits big same-shape or scalar-operand cases over
    ``threads`` (bit-identical to numpy's), and leaves the rest to ``fallback``."""
    same, scalar, commutes = _LOOPS[op_type]
    code = list(_LOOPS).index(op_type)  # numba_fp32._channels's op code
    fallback = fallback or _BINARY[op_type]
    if threads <= 1:
        return fallback

    def binary(a, b):
        if (a.dtype == np.float32 and b.dtype == np.float32 and max(a.size, b.size) >= PARALLEL_MIN
                and a.flags.c_contiguous and b.flags.c_contiguous):
            if a.shape == b.shape:
                out = np.empty(a.shape, np.float32)
                _chunked2(same, threads, out.reshape(-1), a.reshape(-1), b.reshape(-1))
                return out
            if b.size == 1 and a.ndim >= b.ndim:
                out = np.empty(a.shape, np.float32)
                _chunked(scalar, threads, out.reshape(-1), a.reshape(-1), b.reshape(-1))
                return out
            if (a.ndim == 4 and 3 <= b.ndim <= 4 and b.shape[-2:] == (1, 1) and b.size == a.shape[1]
                    and b.shape[-3] == a.shape[1] and a.shape[0] * a.shape[1] >= threads):
                out = np.empty(a.shape, np.float32)
                rows, b1 = a.reshape(a.shape[0] * a.shape[1], -1), b.reshape(-1)
                out2 = out.reshape(rows.shape)
                glue.run_chunks(lambda first, last: numba_fp32._channels(code, rows, b1, first, last, out2),
                                rows.shape[0], threads)
                return out
            if a.size == 1 and commutes and b.ndim >= a.ndim:
                out = np.empty(b.shape, np.float32)
                _chunked(scalar, threads, out.reshape(-1), b.reshape(-1), a.reshape(-1))
                return out
        return fallback(a, b)
    binary.threads = threads
    return binary


# ---- fused chains of elementwise ops: one generated Numba loop per chain structure -------------
# numpy makes one pass per op; a chain of n ops compiled to one loop keeps each element in a
# register through all n (each op rounded to float32 as numpy's pass rounds it).
_CHAIN_EXPR = {0: "r{a} + r{b}", 1: "r{a} - r{b}", 2: "r{a} * r{b}", 3: "r{a} / r{b}",
               4: "r{a} + c{k}", 5: "r{a} - c{k}", 6: "r{a} * c{k}", 7: "r{a} / c{k}",
               8: "c{k} - r{a}", 9: "c{k} / r{a}"}


def _chain_source(structure) -> str:
    """The source of ``chain(x, consts, out)`` for ``structure`` rows (op, a, b): register 0 is
    ``x[i]``, row k writes register k + 1 from its registers a, b and ``consts[k]``."""
    lines = ["def chain(x, consts, out):"]
    for k, (op, _, _) in enumerate(structure):
        lines.append(f"    c{k} = consts[{k}, 0]")
        if op == 10:
            lines.append(f"    h{k} = consts[{k}, 1]")
    lines += ["    zero = np.float32(0)", "    for i in range(x.shape[0]):", "        r0 = x[i]"]
    for k, (op, a, b) in enumerate(structure):
        d = k + 1
        if op == 10:  # np.clip: min(max(v, lo), hi), NaN passes through
            lines.append(f"        t = r{a} if not (r{a} < c{k}) else c{k}")
            lines.append(f"        r{d} = t if not (t > h{k}) else h{k}")
        elif op == 11:
            lines.append(f"        r{d} = r{a} if not (r{a} < zero) else zero")
        else:
            lines.append(f"        r{d} = " + _CHAIN_EXPR[op].format(a=a, b=b, k=k))
    lines.append(f"        out[i] = r{len(structure)}")
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def _compiled_chain(structure):
    """The Numba loop for a chain structure, from a generated module in a cache folder so that
    Numba's ``cache=True`` keeps the machine code between processes (compiling costs ~0.3 s);
    where that folder cannot be written, compiled in memory."""
    import numba
    source = _chain_source(structure)
    name = "graphopt_chain_" + hashlib.sha1(source.encode()).hexdigest()[:16]
    try:
        folder = os.path.join(tempfile.gettempdir(), f"graphopt-chains-{os.getuid()}")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.stat(folder)
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            # code is imported from there: only a folder of this user's that no one else can
            # write to will do (another user could have made it first in a shared /tmp)
            raise OSError(f"{folder} is not this user's private folder")
        path = os.path.join(folder, name + ".py")
        if not os.path.exists(path):
            text = "import numba\nimport numpy as np\n\n\n@numba.jit(nopython=True, nogil=True, cache=True, error_model='numpy')\n" + source
            partial = f"{path}.{os.getpid()}.tmp"
            with open(partial, "w") as handle:
                handle.write(text)
            os.replace(partial, path)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # Numba's cache finds the module by name when it loads
        spec.loader.exec_module(module)
        return module.chain
    except OSError:
        namespace = {"np": np}
        exec(source, namespace)
        return numba.jit(nopython=True, nogil=True, error_model="numpy")(namespace["chain"])


def chain_kernel(program, members, root: int, constants: dict, threads: int):
    """The kernel of a fused elementwise chain (``plan.fuse_elementwise_chains``): ``program``
    rows (op, a, b, c1, c2, constant ndim), register 0 the input, register k+1 the result of
    row k. Float32 input of rank at least the constants': one generated loop (split among
    ``threads`` when big); anything else runs the ``members`` (kernel, input slots, output
    slot) one by one."""
    structure = tuple((int(op), int(a), int(b)) for op, a, b, _, _, _ in program)
    consts = np.array([(c1, c2) for _, _, _, c1, c2, _ in program], np.float32)
    min_ndim = max(row[5] for row in program)
    fixed = {s: constants[s] for _, inputs, _ in members for s in inputs if s in constants}
    compiled = []

    def one_by_one(x):
        values = dict(fixed)
        values[0], values[root] = None, x
        for kernel, inputs, output in members:
            values[output] = kernel(*[values[s] for s in inputs])
        return values[members[-1][2]]

    def chain(x):
        if x.dtype != np.float32 or x.ndim < min_ndim or x.size == 0:
            return one_by_one(x)
        if not compiled:
            compiled.append(_compiled_chain(structure))
        loop = compiled[0]
        x = np.ascontiguousarray(x)
        out = np.empty(x.shape, np.float32)
        flat, dst = x.reshape(-1), out.reshape(-1)
        if threads > 1 and flat.shape[0] >= PARALLEL_MIN:
            glue.run_chunks(lambda first, last: loop(flat[first:last], consts, dst[first:last]),
                            flat.shape[0], threads, 16)
        else:
            loop(flat, consts, dst)
        return out
    return chain


@register(*_BINARY)
def build_binary(node: NodeSpec):
    refuse(node.attr("broadcast") is not None and node.opset < 7,
           "legacy broadcast attribute (opset < 7)")
    if node.op_type == "Add":
        return build_add(node.threads)
    if node.op_type in _LOOPS:
        return parallel_binary(node.op_type, node.threads)
    return _BINARY[node.op_type]


def build_add(threads: int):
    """Add; the kernel's ``with_relu`` is ``Relu(Add(a, b))`` in one pass for float32 operands of
    one shape (or a one-value second operand), for the plan's fusion of that pair."""
    add = parallel_binary("Add", threads)

    def kernel(a, b):
        return add(a, b)

    def with_relu(a, b):
        if a.dtype == np.float32 and b.dtype == np.float32 and a.flags.c_contiguous and b.flags.c_contiguous:
            if a.shape == b.shape:
                out = np.empty(a.shape, np.float32)
                _chunked2(numba_fp32._add_relu, threads, out.reshape(-1), a.reshape(-1), b.reshape(-1))
                return out
            if b.size == 1 and a.ndim >= b.ndim:
                out = np.empty(a.shape, np.float32)
                _chunked(numba_fp32._add_relu_scalar, threads, out.reshape(-1), a.reshape(-1), b.reshape(-1))
                return out
        y = np.add(a, b)
        return np.maximum(y, y.dtype.type(0), out=y)

    kernel.with_relu = with_relu
    return kernel


_VARIADIC = {"Sum": np.add, "Max": np.maximum, "Min": np.minimum, "Mean": np.add}


@register(*_VARIADIC)
def build_variadic(node: NodeSpec):
    """Sum / Max / Min / Mean of any number of inputs, with broadcasting."""
    refuse(node.opset < 8, f"{node.op_type} before opset 8 (no broadcasting)")
    combine = _VARIADIC[node.op_type]

    def variadic(*xs):
        y = xs[0]
        for x in xs[1:]:
            y = combine(y, x)
        if node.op_type == "Mean":
            y = (y / y.dtype.type(len(xs))).astype(y.dtype, copy=False)
        return y

    return variadic


def _sigmoid(x):
    # in place on one temporary; exp(-x) overflowing to inf gives the right limit, 0
    with np.errstate(over="ignore"):
        y = np.negative(x)
        np.exp(y, out=y)
        y += 1
        return np.reciprocal(y, out=y)


def _relu(x):
    return np.maximum(x, x.dtype.type(0))


_UNARY = {
    "Relu": _relu, "Sigmoid": _sigmoid, "Tanh": np.tanh, "Erf": erf, "Sqrt": np.sqrt,
    "Exp": np.exp, "Log": np.log, "Neg": np.negative, "Abs": np.abs, "Not": np.logical_not,
    "Identity": lambda x: x,
}


@register(*_UNARY)
def build_unary(node: NodeSpec):
    if node.op_type == "Sigmoid":
        return build_sigmoid(node.threads)
    if node.op_type == "Relu" and node.threads > 1:
        threads = node.threads

        def relu(x):
            if x.dtype == np.float32 and x.size >= PARALLEL_MIN:
                return unary_loop(numba_fp32._relu, threads, x)
            return _relu(x)
        relu.threads = threads
        return relu
    return _UNARY[node.op_type]


def _silu_in_place(x, out):
    numba_fp32._silu32_in_place(out)  # out is x


def build_sigmoid(threads: int):
    """Sigmoid: float32 in one vectorized Numba pass (split among ``threads`` when big). The
    kernel's ``silu(x, out=None)`` computes ``x * sigmoid(x)`` (a Sigmoid then a Mul) in one
    pass, for the plan's fusion of that pair."""
    def sigmoid(x):
        if x.dtype == np.float32:
            return unary_loop(numba_fp32._sigmoid32, threads, x, min_size=PARALLEL_MIN_EXP)
        return _sigmoid(x)

    def silu(x, out=None):
        if out is not None and not (out.flags.c_contiguous and out.dtype == x.dtype):
            out = None
        if x.dtype == np.float32:
            if out is x:
                return unary_loop(_silu_in_place, threads, x, out=x, min_size=PARALLEL_MIN_EXP)
            return unary_loop(numba_fp32._silu32, threads, x, out=out, min_size=PARALLEL_MIN_EXP)
        y = np.multiply(x, _sigmoid(x), out=out)
        return y

    sigmoid.silu = silu
    return sigmoid


@register("Reciprocal")
def build_reciprocal(node: NodeSpec):
    return lambda x: np.reciprocal(x) if x.dtype.kind == "f" else (1 / x).astype(x.dtype)


@register("LeakyRelu")
def build_leaky_relu(node: NodeSpec):
    alpha = node.attr("alpha", 0.01)
    return lambda x: np.where(x >= 0, x, x * x.dtype.type(alpha))


@register("HardSigmoid")
def build_hard_sigmoid(node: NodeSpec):
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)

    threads = node.threads

    def hard_sigmoid(x):
        if x.dtype in (np.float32, np.float64):
            t = x.dtype.type
            return unary_loop(numba_fp32._hard_sigmoid, threads, x, t(alpha), t(beta), t(0), t(1))
        return np.clip(x * x.dtype.type(alpha) + x.dtype.type(beta), 0, 1).astype(x.dtype, copy=False)
    return hard_sigmoid


@register("HardSwish")
def build_hard_swish(node: NodeSpec):
    threads = node.threads

    def hard_swish(x):
        if x.dtype in (np.float32, np.float64):
            t = x.dtype.type
            return unary_loop(numba_fp32._hard_swish, threads, x, t(1 / 6), t(0.5), t(0), t(1))
        t = x.dtype.type
        y = x * t(1 / 6)
        y += t(0.5)
        np.clip(y, t(0), t(1), out=y)
        y *= x
        return y
    return hard_swish


@register("Gelu")
def build_gelu(node: NodeSpec):
    approximate = node.attr("approximate", "none")
    refuse(approximate not in ("none", "tanh"), f"Gelu approximate={approximate!r}")
    if approximate == "tanh":
        def gelu_tanh(x):
            if x.dtype in (np.float32, np.float64):
                return numba_fp32.gelu(x, approximate=True)
            t = x.dtype.type
            inner = t(math.sqrt(2 / math.pi)) * (x + t(0.044715) * x * x * x)
            return t(0.5) * x * (t(1) + np.tanh(inner))
        return gelu_tanh

    def gelu(x):
        if x.dtype in (np.float32, np.float64):
            return numba_fp32.gelu(x)
        t = x.dtype.type
        return t(0.5) * x * (t(1) + erf(x * t(1 / math.sqrt(2))))
    return gelu


@register("Clip")
def build_clip(node: NodeSpec):
    if node.opset < 11:
        lo, hi = node.attr("min", -np.inf), node.attr("max", np.inf)
        return lambda x: np.clip(x, x.dtype.type(lo) if x.dtype.kind == "f" else lo, hi).astype(x.dtype, copy=False)

    threads = node.threads

    def clip(x, lo=None, hi=None):
        if lo is None and hi is None:
            return x
        if (threads > 1 and x.dtype == np.float32 and x.size >= PARALLEL_MIN
                and (lo is None or (lo.size == 1 and lo.dtype == np.float32))
                and (hi is None or (hi.size == 1 and hi.dtype == np.float32))):
            low = np.float32(-np.inf) if lo is None else lo.reshape(-1)[0]
            high = np.float32(np.inf) if hi is None else hi.reshape(-1)[0]
            return unary_loop(numba_fp32._clip, threads, x, low, high)
        return np.clip(x, lo, hi).astype(x.dtype, copy=False)
    clip.threads = threads
    return clip


@register("Where")
def build_where(node: NodeSpec):
    return np.where


@register("Softmax")
def build_softmax(node: NodeSpec):
    axis = node.attr("axis", -1 if node.opset >= 13 else 1)

    def softmax(x):
        if x.dtype in (np.float32, np.float64) and x.ndim and axis in (-1, x.ndim - 1):
            return numba_fp32.softmax_rows(x, x.size // x.shape[-1] if x.shape[-1] else 0)
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    if node.opset >= 13:
        return softmax

    def softmax_2d(x):
        # before opset 13 the input is seen as a matrix [prod(dims < axis), prod(dims >= axis)]
        a = axis + x.ndim if axis < 0 else axis
        rows = int(np.prod(x.shape[:a], dtype=np.int64))
        if x.dtype in (np.float32, np.float64) and x.size:
            return numba_fp32.softmax_rows(x, rows)
        flat = x.reshape(rows, -1)
        e = np.exp(flat - flat.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).reshape(x.shape)
    return softmax_2d
