"""Input specs of a model and seeded sample inputs generated from them.

Symbolic dims take their value from ``dims`` (the CLI's ``--dim NAME=VALUE``); without one, a
batch-like dim is 1 and any other symbolic dim is ``DEFAULT_SYMBOLIC_DIM``.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import onnx

from graphopt.errors import InputSpecError

# Large enough that five stride-2 downsamplings of a dynamic image dim stay non-empty.
DEFAULT_SYMBOLIC_DIM = 32
_BATCH_NAMES = re.compile(r"batch|^n$|^b$|^bs$|^N$", re.IGNORECASE)


@dataclasses.dataclass
class InputSpec:
    name: str
    dtype: np.dtype
    # int for a fixed dim, str for a symbolic one, None for an unknown one
    dims: list[int | str | None]

    def shape_text(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"


def value_info_spec(info: onnx.ValueInfoProto) -> InputSpec:
    ttype = info.type.tensor_type
    dims: list[int | str | None] = []
    for d in ttype.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type) if ttype.elem_type else np.dtype("float32")
    return InputSpec(info.name, np.dtype(dtype), dims)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs that need feeding (initializers listed as inputs are skipped)."""
    initializers = {t.name for t in model.graph.initializer}
    return [value_info_spec(i) for i in model.graph.input if i.name not in initializers]


def output_specs(model: onnx.ModelProto) -> list[InputSpec]:
    return [value_info_spec(o) for o in model.graph.output]


def parse_dims(items: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Parse ``NAME=VALUE`` strings (``--dim batch=4``)."""
    dims = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.strip().isdigit() or int(value) <= 0:
            raise InputSpecError(f"--dim '{item}': expected NAME=VALUE with a positive integer",
                                 "e.g. --dim batch=1 --dim seq=128")
        dims[name.strip()] = int(value)
    return dims


def resolve_shape(spec: InputSpec, dims: dict[str, int]) -> tuple[int, ...]:
    shape = []
    for d in spec.dims:
        if isinstance(d, int):
            shape.append(d)
        elif isinstance(d, str):
            shape.append(dims.get(d, 1 if _BATCH_NAMES.search(d) else DEFAULT_SYMBOLIC_DIM))
        else:
            shape.append(1)
    return tuple(shape)


def random_array(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Seeded values suited to the dtype: N(0,1) floats, small non-negative ints (valid indices)."""
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        high = 256 if dtype.itemsize == 1 else 2
        return rng.integers(0, high, shape).astype(dtype)
    raise InputSpecError(f"cannot generate sample values of dtype {dtype}",
                         "pass real inputs with --data inputs.npz")


def make_feeds(model: onnx.ModelProto, dims: dict[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded sample inputs for every input of ``model``."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    return {spec.name: random_array(resolve_shape(spec, dims), spec.dtype, rng) for spec in input_specs(model)}


def check_dims(model: onnx.ModelProto, dims: dict[str, int]) -> None:
    """Refuse ``--dim`` names that match no symbolic dim of the model's inputs (likely a typo)."""
    symbolic = sorted({d for spec in input_specs(model) for d in spec.dims if isinstance(d, str)})
    for name in dims:
        if name not in symbolic:
            hint = f"its symbolic dims: {', '.join(symbolic)}" if symbolic else "all its input dims are fixed"
            raise InputSpecError(f"--dim {name}: the model has no symbolic input dim of that name", hint)


def read_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """All arrays of an .npz file; ``what`` names it in errors (e.g. "--data", "calibration file")."""
    path = Path(path)
    if not path.is_file():
        raise InputSpecError(f"{what} {path}: no such file", "give an .npz written with numpy.savez(path, name=array)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise InputSpecError(f"{what} {path}: not a readable .npz file ({exc})",
                             "write it with numpy.savez(path, name=array)") from exc
