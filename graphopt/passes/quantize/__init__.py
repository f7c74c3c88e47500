"""The quantize family: static int8 (QDQ) and dynamic int8 quantization passes (DESIGN.md, U8S8)."""
from graphopt.passes.quantize.dynamic_quantization import DynamicQuantization
from graphopt.passes.quantize.qdq_insertion import QDQInsertion

__all__ = ["DynamicQuantization", "QDQInsertion"]
