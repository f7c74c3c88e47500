"""graphopt's runtime as an ONNX backend (``onnx.backend.base.Backend``) for the conformance suite."""
from __future__ import annotations

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from graphopt.runtime import Session
from graphopt.runtime.ops import OPS


def _array(value):
    """Test data may hold TensorProtos (as the suite's own runner allows)."""
    return onnx.numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


class GraphoptRep(BackendRep):
    def __init__(self, session: Session):
        self.session = session

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            feeds = {name: _array(value) for name, value in inputs.items()}
        else:
            names = [i.name for i in self.session.get_inputs()]
            feeds = {name: _array(value) for name, value in zip(names, inputs)}
        return tuple(self.session.run(None, feeds))


class GraphoptBackend(Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs) -> GraphoptRep:
        super().prepare(model, device, **kwargs)
        return GraphoptRep(Session(model))

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


def claimed_ops() -> set[str]:
    """The op types the runtime implements (Constant is folded at creation)."""
    return set(OPS)


def node_ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def outputs_match(expected: list[np.ndarray], actual, rtol: float, atol: float) -> None:
    assert len(expected) == len(actual), f"{len(actual)} outputs, expected {len(expected)}"
    for i, (want, got) in enumerate(zip(expected, actual)):
        want, got = _array(want), np.asarray(got)
        assert got.dtype == want.dtype, f"output {i}: dtype {got.dtype}, expected {want.dtype}"
        assert got.shape == want.shape, f"output {i}: shape {got.shape}, expected {want.shape}"
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"output {i}")
