"""graphopt's own execution backend: ``Session`` runs fp32 and int8 ONNX models on the kernels."""
from graphopt.runtime.session import NodeArg, Session

__all__ = ["NodeArg", "Session"]
