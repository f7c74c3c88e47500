"""Errors that graphopt reports to users.

Every error a user can cause (a bad file, a bad flag, bad data) is a :class:`GraphoptError`.
The CLI prints ``str(error)`` on one line and exits with status 2; ``--debug`` shows the traceback.
The message names the file, node or tensor at fault; the hint says what to do about it.
"""


class GraphoptError(Exception):
    """Base class of all user-facing errors."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        one_line = " ".join(self.message.split())
        return f"{one_line} ({self.hint})" if self.hint else one_line


class ModelLoadError(GraphoptError):
    """The file is missing, not ONNX, truncated or rejected by the ONNX checker."""


class UnsupportedModelError(GraphoptError):
    """The model uses an IR version, opset or op that graphopt (or the installed onnx) cannot handle."""


class UnsafeExternalDataError(GraphoptError):
    """An external-data location points outside the model's folder."""


class InputSpecError(GraphoptError):
    """Wrong input names, shapes, dtypes or ``--dim`` values."""


class OutputPathError(GraphoptError):
    """The output would overwrite the input, or cannot be written."""


class PassError(GraphoptError):
    """A pass could not run (bad option, unsupported graph)."""
