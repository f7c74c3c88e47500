"""Graph passes. One module per pass, grouped by family (``cleanup``, later ``fusion``, ...)."""
from graphopt.passes.pipeline import (
    DEFAULT_FOLD_LIMIT_BYTES,
    Pass,
    PassContext,
    PassManager,
    PassReport,
    PipelineResult,
)

__all__ = ["DEFAULT_FOLD_LIMIT_BYTES", "Pass", "PassContext", "PassManager", "PassReport", "PipelineResult"]
