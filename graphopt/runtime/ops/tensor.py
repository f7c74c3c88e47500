"""Ops that move, reshape, select or create data: shape ops, Slice/Gather/Concat, Pad, Resize, Cast."""
from __future__ import annotations

import math

import numpy as np
import onnx

from graphopt.runtime.ops import NodeSpec, normalize_axis, numba_fp32, refuse, register

# The element types the runtime computes with (ONNX TensorProto data types).
NUMERIC_TYPES = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32,
    onnx.TensorProto.UINT64, onnx.TensorProto.BOOL,
}


def type_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type)


def numpy_dtype(elem_type: int, what: str) -> np.dtype:
    refuse(elem_type not in NUMERIC_TYPES, f"{what} {type_name(elem_type)}")
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def _ints(value) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


@register("Constant")
def build_constant(node: NodeSpec):
    value = constant_value(node)
    return lambda: value


def constant_value(node: NodeSpec) -> np.ndarray:
    """The tensor a Constant node holds."""
    attrs = node.attrs
    refuse("sparse_value" in attrs, "Constant sparse_value")
    refuse("value_string" in attrs or "value_strings" in attrs, "Constant of strings")
    if "value" in attrs:
        tensor = attrs["value"]
        numpy_dtype(tensor.data_type, "Constant of type")
        return onnx.numpy_helper.to_array(tensor)
    if "value_float" in attrs:
        return np.array(attrs["value_float"], np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], np.int64)
    raise ValueError(f"Constant node {node.name} has no value")


@register("ConstantOfShape")
def build_constant_of_shape(node: NodeSpec):
    value = node.attr("value")
    fill = onnx.numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
    if value is not None:
        numpy_dtype(value.data_type, "ConstantOfShape of type")
    return lambda shape: np.full(_ints(shape), fill[0], fill.dtype)


@register("Shape")
def build_shape(node: NodeSpec):
    start, end = node.attr("start", 0), node.attr("end")

    def shape(x):
        return np.array(x.shape[start:end] if end is not None else x.shape[start:], np.int64)
    return shape


@register("Size")
def build_size(node: NodeSpec):
    return lambda x: np.array(x.size, np.int64)


@register("Cast")
def build_cast(node: NodeSpec):
    dtype = numpy_dtype(node.attr("to"), "Cast to")
    refuse(node.attr("round_mode") not in (None, "up"), "Cast round_mode")
    return lambda x: x.astype(dtype, copy=False)


@register("Reshape")
def build_reshape(node: NodeSpec):
    refuse(node.opset < 5, "Reshape with a shape attribute (opset < 5)")
    allow_zero = bool(node.attr("allowzero", 0))

    const_shape = node.const(1)
    fixed = None
    if const_shape is not None:
        fixed = tuple(_ints(const_shape))
        if not allow_zero and 0 in fixed:
            fixed = None

    # a plan passes the same (frozen) shape values every run: parsed dims by (bytes, input shape),
    # a look-up instead of a few microseconds of int() per element
    parsed: dict[tuple, tuple] = {}

    def reshape(x, shape):
        if fixed is not None:
            return x.reshape(fixed)
        key = (shape.dtype.char, shape.tobytes(), x.shape) if isinstance(shape, np.ndarray) else None
        dims = parsed.get(key) if key is not None else None
        if dims is None:
            dims = _ints(shape)
            if not allow_zero:
                dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
            dims = tuple(dims)
            if key is not None and len(parsed) < 64:
                parsed[key] = dims
        return x.reshape(dims)
    return reshape


@register("Flatten")
def build_flatten(node: NodeSpec):
    axis = node.attr("axis", 1)

    def flatten(x):
        a = normalize_axis(axis, x.ndim)
        return x.reshape(int(np.prod(x.shape[:a], dtype=np.int64)), -1 if x.size else int(np.prod(x.shape[a:])))
    return flatten


@register("Transpose")
def build_transpose(node: NodeSpec):
    perm = node.attr("perm")
    if perm is None:
        return lambda x: x.transpose()
    perm = tuple(perm)
    return lambda x: x.transpose(perm)  # the method: less dispatch than np.transpose


def _axes_source(node: NodeSpec, since: int):
    """Axes from the attribute (before opset ``since``) or from input 1."""
    if node.opset < since:
        attr = node.attr("axes")
        return lambda axes: attr
    return lambda axes: None if axes is None else _ints(axes)


@register("Squeeze")
def build_squeeze(node: NodeSpec):
    axes_of = _axes_source(node, 13)

    def squeeze(x, axes=None):
        axes = axes_of(axes)
        if axes is None:
            return np.squeeze(x)
        return np.squeeze(x, axis=tuple(normalize_axis(a, x.ndim) for a in axes))
    return squeeze


@register("Unsqueeze")
def build_unsqueeze(node: NodeSpec):
    axes_of = _axes_source(node, 13)

    constant_axes = node.opset < 13 or node.const(1) is not None
    shapes: dict[tuple, list] = {}  # with constant axes: the output shape per input shape

    def unsqueeze(x, axes=None):
        shape = shapes.get(x.shape) if constant_axes else None
        if shape is None:
            axes = axes_of(axes)
            rank = x.ndim + len(axes)
            shape = list(x.shape)
            for a in sorted(normalize_axis(a, rank) for a in axes):
                shape.insert(a, 1)
            if constant_axes and len(shapes) < 64:
                shapes[x.shape] = shape
        return x.reshape(shape)
    return unsqueeze


@register("Concat")
def build_concat(node: NodeSpec):
    axis = node.attr("axis")
    refuse(axis is None, "Concat without axis (opset < 4)")
    return lambda *xs: np.concatenate(xs, axis=axis)


@register("Split", multi_output=True)
def build_split(node: NodeSpec):
    axis, outputs = node.attr("axis", 0), len(node.outputs)
    num_outputs = node.attr("num_outputs")

    def split(x, sizes=None):
        a = normalize_axis(axis, x.ndim)
        if node.opset < 13:
            sizes = node.attr("split")
        if sizes is None or len(sizes) == 0:
            parts = num_outputs or outputs
            chunk = -(-x.shape[a] // parts)
            sizes = [min(chunk, x.shape[a] - i * chunk) for i in range(parts)]
        bounds = np.cumsum(_ints(sizes))[:-1]
        return tuple(np.split(x, bounds, axis=a))
    return split


def _slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice clamping, as a Python slice (whose own negative-index rules differ)."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start, end = min(max(start, -1), dim - 1), min(max(end, -1), dim - 1)
    if start < 0:
        return slice(0, 0, 1)
    return slice(start, None if end < 0 else end, step)


@register("Slice")
def build_slice(node: NodeSpec):
    def slice_(x, starts=None, ends=None, axes=None, steps=None):
        if node.opset < 10:
            starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes")
        starts, ends = _ints(starts), _ints(ends)
        axes = list(range(len(starts))) if axes is None else _ints(axes)
        steps = [1] * len(starts) if steps is None else _ints(steps)
        index = [slice(None)] * x.ndim
        for start, end, axis, step in zip(starts, ends, axes, steps):
            axis = normalize_axis(axis, x.ndim)
            index[axis] = _slice_bounds(start, end, step, x.shape[axis])
        return x[tuple(index)]
    return slice_


@register("Gather")
def build_gather(node: NodeSpec):
    axis = node.attr("axis", 0)

    def gather(x, indices):
        return np.take(x, indices.astype(np.int64, copy=False), axis=normalize_axis(axis, x.ndim))
    return gather


@register("Expand")
def build_expand(node: NodeSpec):
    def expand(x, shape):
        return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(shape))))
    return expand


@register("Tile")
def build_tile(node: NodeSpec):
    return lambda x, repeats: np.tile(x, _ints(repeats))


@register("Range")
def build_range(node: NodeSpec):
    def range_(start, limit, delta):
        count = max(int(math.ceil((limit.item() - start.item()) / delta.item())), 0)
        return (start + np.arange(count, dtype=np.float64 if start.dtype.kind == "f" else np.int64)
                * delta).astype(start.dtype)
    return range_


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


@register("Pad")
def build_pad(node: NodeSpec):
    mode = node.attr("mode", "constant")
    refuse(mode not in _PAD_MODES, f"Pad mode={mode!r}")

    def pad(x, pads=None, value=None, axes=None):
        if node.opset < 11:
            pads, value = node.attr("pads"), node.attr("value", 0.0)
        pads = _ints(pads)
        axes = list(range(x.ndim)) if axes is None else [normalize_axis(a, x.ndim) for a in _ints(axes)]
        half = len(pads) // 2
        widths = [[0, 0] for _ in range(x.ndim)]
        for i, axis in enumerate(axes):
            widths[axis] = [pads[i], pads[i + half]]
        # negative pads crop
        crop = tuple(slice(-min(b, 0), x.shape[a] + min(e, 0)) for a, (b, e) in enumerate(widths))
        x = x[crop]
        widths = [(max(b, 0), max(e, 0)) for b, e in widths]
        if mode == "constant":
            fill = 0 if value is None else np.asarray(value).reshape(-1)[0] if np.asarray(value).size else 0
            return np.pad(x, widths, mode="constant", constant_values=fill)
        return np.pad(x, widths, mode=_PAD_MODES[mode])
    return pad


_COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                     "asymmetric", "tf_crop_and_resize")
_NEAREST_MODES = {
    "round_prefer_floor": lambda x: np.ceil(x - 0.5),
    "round_prefer_ceil": lambda x: np.floor(x + 0.5),
    "floor": np.floor,
    "ceil": np.ceil,
}



def _source_coordinates(mode: str, out_size: int, in_size: int, scale: float, roi) -> np.ndarray:
    """Where each output index samples the input, per coordinate_transformation_mode."""
    y = np.arange(out_size, dtype=np.float64)
    out_width = scale * in_size  # the spec's "length_resized" before rounding
    if mode == "align_corners":
        return np.zeros(out_size) if out_width == 1 else y * (in_size - 1) / (out_width - 1)
    if mode == "asymmetric":
        return y / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if out_width == 1:
            return np.full(out_size, (end - start) * (in_size - 1) / 2 + start * (in_size - 1))
        return y * (end - start) * (in_size - 1) / (out_width - 1) + start * (in_size - 1)
    if mode == "pytorch_half_pixel":
        return np.full(out_size, -0.5) if out_width == 1 else (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = in_size / 2 * (1 - out_size / out_width)
        return offset + (y + 0.5) / scale - 0.5
    return (y + 0.5) / scale - 0.5


def _resize_axis(x, axis, out_size, scale, settings, roi):
    mode, coordinate_mode, nearest, extrapolation = settings
    in_size = x.shape[axis]
    source = _source_coordinates(coordinate_mode, out_size, in_size, scale, roi)
    outside = (source < 0) | (source > in_size - 1) if coordinate_mode == "tf_crop_and_resize" else None
    if mode == "nearest":
        index = np.clip(_NEAREST_MODES[nearest](source), 0, in_size - 1).astype(np.intp)
        result = np.take(x, index, axis=axis)
    else:
        low = np.floor(source)
        weight = (source - low).astype(x.dtype)
        low = low.astype(np.intp)
        shape = [1] * x.ndim
        shape[axis] = out_size
        weight = weight.reshape(shape)
        first = np.take(x, np.clip(low, 0, in_size - 1), axis=axis)
        second = np.take(x, np.clip(low + 1, 0, in_size - 1), axis=axis)
        result = first + (second - first) * weight
    if outside is not None and outside.any():
        shape = [1] * x.ndim
        shape[axis] = out_size
        result = np.where(outside.reshape(shape), x.dtype.type(extrapolation), result)
    return result


@register("Resize")
def build_resize(node: NodeSpec):
    refuse(node.opset < 11, "Resize before opset 11")
    mode = node.attr("mode", "nearest")
    coordinate_mode = node.attr("coordinate_transformation_mode", "half_pixel")
    nearest = node.attr("nearest_mode", "round_prefer_floor")
    policy = node.attr("keep_aspect_ratio_policy", "stretch")
    refuse(mode not in ("nearest", "linear"), f"Resize mode={mode!r}")
    refuse(bool(node.attr("antialias", 0)), "Resize antialias=1")
    refuse(coordinate_mode not in _COORDINATE_MODES,
           f"Resize coordinate_transformation_mode={coordinate_mode!r}")
    refuse(nearest not in _NEAREST_MODES, f"Resize nearest_mode={nearest!r}")
    refuse(policy not in ("stretch", "not_larger", "not_smaller"),
           f"Resize keep_aspect_ratio_policy={policy!r}")
    settings = (mode, coordinate_mode, nearest, node.attr("extrapolation_value", 0.0))
    attr_axes = node.attr("axes")
    nearest_index: dict[tuple, list] = {}

    def resize(x, roi=None, scales=None, sizes=None):
        rank = x.ndim
        axes = list(range(rank)) if attr_axes is None else [normalize_axis(a, rank) for a in attr_axes]
        if sizes is not None and sizes.size:
            sizes = _ints(sizes)
            factors = [sizes[i] / x.shape[a] for i, a in enumerate(axes)]
            if policy != "stretch":
                common = min(factors) if policy == "not_larger" else max(factors)
                factors = [common] * len(axes)
                sizes = [int(common * x.shape[a] + 0.5) for a in axes]
        else:
            factors = [float(s) for s in np.asarray(scales).reshape(-1)]
            sizes = [int(f * x.shape[a]) for f, a in zip(factors, axes)]
        roi = None if roi is None or roi.size == 0 else np.asarray(roi, np.float64).reshape(-1)
        # nearest only selects values (exact on integers: a lowered uint8 Resize stays uint8);
        # interpolation and extrapolation values need floats
        selects = mode == "nearest" and coordinate_mode != "tf_crop_and_resize"
        if selects and rank >= 2 and x.dtype.kind in "fiub" and x.dtype != np.float16 and all(
                sizes[i] == x.shape[a] and factors[i] == 1.0 for i, a in enumerate(axes) if a < rank - 2):
            # only the last two axes change: one compiled pass selecting rows and columns
            # (the same indices as _resize_axis, made once per input shape and sizes), no
            # intermediate tensor
            key = (x.shape, tuple(sizes), tuple(factors))
            index = nearest_index.get(key)
            if index is not None:
                return numba_fp32.nearest_2d(x, *index)
            index = []
            for axis in (rank - 2, rank - 1):
                if axis in axes and not (sizes[axes.index(axis)] == x.shape[axis] and factors[axes.index(axis)] == 1.0):
                    i = axes.index(axis)
                    source = _source_coordinates(coordinate_mode, sizes[i], x.shape[axis], factors[i], None)
                    index.append(np.clip(_NEAREST_MODES[nearest](source), 0, x.shape[axis] - 1).astype(np.intp))
                else:
                    index.append(np.arange(x.shape[axis], dtype=np.intp))
            if len(nearest_index) < 16:
                nearest_index[key] = index
            return numba_fp32.nearest_2d(x, index[0], index[1])
        work = x if x.dtype.kind == "f" or selects else x.astype(np.float64)
        for i, axis in enumerate(axes):
            if sizes[i] == work.shape[axis] and factors[i] == 1.0 and coordinate_mode != "tf_crop_and_resize":
                continue
            axis_roi = None if roi is None else (roi[i], roi[len(axes) + i])
            work = _resize_axis(work, axis, sizes[i], factors[i], settings, axis_roi)
        if work.dtype != x.dtype:
            info = np.iinfo(x.dtype)
            work = np.clip(np.rint(work), info.min, info.max).astype(x.dtype)
        return work
    return resize
