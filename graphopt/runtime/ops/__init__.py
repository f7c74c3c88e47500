"""Op implementations: one builder per ONNX op, registered by op type.

A builder receives a :class:`NodeSpec` (attributes parsed, constant inputs known) and returns a
*kernel*: a callable taking the node's input arrays positionally (``None`` for an omitted optional
input) and returning one array, or a tuple when the node has several outputs. Everything that can
be decided from attributes and constant inputs (weight layouts, axes, padding) is decided in the
builder, once, so that the kernel does only the arithmetic. A builder that meets an attribute value
it does not implement raises :class:`Unsupported`; the session collects those for every node and
reports them together.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

Kernel = Callable[..., Any]


class Unsupported(Exception):
    """An attribute value or input type that this runtime does not implement."""


@dataclasses.dataclass
class NodeSpec:
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    # the value of each input known when the session is created (initializer or Constant), else None
    consts: list[np.ndarray | None]
    opset: int
    threads: int = 1

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def const(self, index: int) -> np.ndarray | None:
        return self.consts[index] if index < len(self.consts) else None

    def has_input(self, index: int) -> bool:
        return index < len(self.inputs) and self.inputs[index] != ""

    def num_outputs(self) -> int:
        return sum(1 for o in self.outputs if o)


@dataclasses.dataclass
class OpDef:
    build: Callable[[NodeSpec], Kernel]
    multi_output: bool


OPS: dict[str, OpDef] = {}


def register(*op_types: str, multi_output: bool = False):
    """Register a builder for ``op_types``; ``multi_output`` kernels return a tuple."""
    def wrap(build):
        for op_type in op_types:
            OPS[op_type] = OpDef(build, multi_output)
        return build
    return wrap


def refuse(condition: bool, reason: str) -> None:
    if condition:
        raise Unsupported(reason)


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# Importing the modules fills OPS.
from graphopt.runtime.ops import (elementwise, nn, quantized, reduce, tensor)  # noqa: E402,F401
