"""graphopt: an ONNX graph optimizer with its own compiled int8 CPU backend."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("graphopt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from graphopt.errors import GraphoptError
from graphopt.model_io import load_model, save_model
from graphopt.quantize import quantize

__all__ = ["GraphoptError", "__version__", "load_model", "quantize", "save_model"]
