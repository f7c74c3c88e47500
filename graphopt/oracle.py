"""onnxruntime as the oracle: the reference that rewrites, calibration and comparisons trust."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from graphopt.errors import GraphoptError
from graphopt.model_io import PROTOBUF_LIMIT_BYTES, tensor_bytes, write_with_external_data


def ort_session(model: onnx.ModelProto, *, threads: int = 1, optimize: bool = False) -> ort.InferenceSession:
    """An onnxruntime CPU session; ``optimize=False`` runs the graph op by op, as written."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        if tensor_bytes(model) < PROTOBUF_LIMIT_BYTES // 2:
            return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        with tempfile.TemporaryDirectory() as tmp:
            path = write_with_external_data(model, Path(tmp))
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated exception types
        raise GraphoptError(f"onnxruntime cannot load the model: {str(exc).strip().splitlines()[0]}",
                            "the model may use an op onnxruntime does not implement; --no-verify skips the check") from exc


def run_oracle(model: onnx.ModelProto, feeds: dict[str, np.ndarray], *,
               session: ort.InferenceSession | None = None) -> dict[str, np.ndarray]:
    """Run ``model`` on onnxruntime and return every graph output by name."""
    session = session or ort_session(model)
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, feeds)
    except Exception as exc:
        raise GraphoptError(f"onnxruntime failed to run the model: {str(exc).strip().splitlines()[0]}",
                            "check the input shapes (--dim NAME=VALUE)") from exc
    return dict(zip(names, values))
