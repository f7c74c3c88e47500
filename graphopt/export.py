"""PyTorch → ONNX, checked against PyTorch's own output.

:func:`export_model` takes a zoo name (``resnet18``), ``path/to/file.py:factory`` or an
``nn.Module``. It exports with the dynamo exporter (``torch.export`` + onnxscript) and falls back to
the TorchScript exporter, with an :class:`ExportFallbackWarning`, when that fails. The model is
exported in eval mode; the file is written atomically by :func:`graphopt.model_io.save_model`
(weights inline, or in ``<name>.data`` beside it above 2 GiB), read back through the ONNX checker
and run on onnxruntime, and the result reports the largest difference from PyTorch's output.

Torch is optional: without it every entry point raises a one-line :class:`GraphoptError`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import logging
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx

from graphopt.errors import GraphoptError, InputSpecError
from graphopt.model_io import load_model, save_model
from graphopt.models import ModelInput, ZooEntry, get_entry
from graphopt.oracle import run_oracle

# The TorchScript exporter's opset when none is asked for (the dynamo exporter has its own default).
TORCHSCRIPT_DEFAULT_OPSET = 17
INSTALL_HINT = 'pip install -e ".[torch]"'
# Loggers that report progress or optional packages (torchvision) while exporting.
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx.experimental")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class ExportFallbackWarning(UserWarning):
    """The dynamo exporter failed and the TorchScript exporter was used instead."""


@dataclasses.dataclass
class ExportResult:
    path: Path
    data_path: Path | None  # external weights beside the model, only above 2 GiB
    exporter: str  # "dynamo" or "torchscript"
    opset: int
    inputs: dict[str, list[int | str]]  # ONNX input name -> dims (str for a symbolic dim)
    output_diffs: dict[str, float]  # ONNX output name -> max |onnxruntime - torch|
    fallback_reason: str | None = None

    @property
    def max_abs_diff(self) -> float:
        return max(self.output_diffs.values(), default=0.0)


def export_model(module_or_name, out_path: str | Path, *, opset: int | None = None,
                 input_shapes: dict[str, tuple[int, ...]] | None = None, dynamic_batch: bool = False,
                 output_names: list[str] | None = None, external_data: bool | None = None,
                 seed: int = 0) -> ExportResult:
    """Export a zoo model, ``path/to/file.py:factory`` or an ``nn.Module`` to ``out_path``.

    ``input_shapes`` maps input names to example shapes: it overrides a zoo model's defaults and is
    required for other modules (one entry per ``forward`` argument, in order; float32). Symbolic
    dims are a zoo model's declared dynamic axes, plus axis 0 of every input with ``dynamic_batch``.
    ``output_names`` names the outputs of a module that is not in the zoo (default ``output``,
    ``output_0``...). ``external_data`` is passed to :func:`~graphopt.model_io.save_model`.
    """
    torch, module, entry = _resolve(module_or_name, input_shapes, output_names)
    shapes = entry.input_shapes(input_shapes)
    feeds = entry.sample_inputs(shapes, seed)
    axes = {i.name: dict(i.dynamic) | ({0: i.dynamic.get(0, "batch")} if dynamic_batch else {})
            for i in entry.inputs}
    with _eval_mode(module), torch.no_grad():
        args = tuple(torch.from_numpy(feeds[i.name]) for i in entry.inputs)
        expected, names = _reference_outputs(module, args, entry)
        proto, exporter, reason = _export(torch, module, args, list(feeds), names, axes, opset)
    path = save_model(proto, out_path, external_data=external_data)
    model = load_model(path)
    try:
        actual = run_oracle(model, feeds)
    except GraphoptError as exc:
        raise GraphoptError(f"{path}: {exc.message}", "the exporter wrote a model that onnxruntime cannot run; "
                            "try another --opset") from exc
    return ExportResult(
        path=path, data_path=_external_data_file(path), exporter=exporter, opset=_default_opset(model),
        inputs={i.name: _dims(i) for i in model.graph.input},
        output_diffs={name: _max_abs_diff(name, want, actual[name]) for name, want in zip(names, expected)},
        fallback_reason=reason)


def _resolve(module_or_name, input_shapes, output_names):
    """(torch, the module, a ZooEntry describing its inputs and outputs)."""
    if isinstance(module_or_name, str) and not _is_file_spec(module_or_name):
        entry = get_entry(module_or_name)  # an unknown name is reported even without torch
        torch = _import_torch()
        return torch, entry.build(input_shapes), entry
    torch = _import_torch()
    module = load_factory(module_or_name) if isinstance(module_or_name, str) else module_or_name
    if not isinstance(module, torch.nn.Module):
        raise GraphoptError(f"expected a torch.nn.Module, got {type(module).__name__}",
                            "the factory must return the model")
    name = module_or_name if isinstance(module_or_name, str) else type(module).__name__
    if not input_shapes:
        raise InputSpecError(f"{name}: the example input shapes are needed to export it",
                             "give --input-shape NAME=1,3,224,224 for each forward() argument, in order")
    inputs = tuple(ModelInput(n, tuple(s)) for n, s in input_shapes.items())
    return torch, module, ZooEntry(name, "user module", "", inputs, tuple(output_names or ()))


def _reference_outputs(module, args, entry: ZooEntry) -> tuple[list[np.ndarray], list[str]]:
    """PyTorch's outputs, as numpy arrays, and their ONNX names."""
    try:
        expected = _leaves(module(*args))
    except Exception as exc:  # the module's own error, e.g. a shape it cannot take
        shapes = {name: list(arg.shape) for name, arg in zip((i.name for i in entry.inputs), args)}
        raise InputSpecError(f"{entry.name}: forward() fails on inputs {shapes}: {_first_line(exc)}",
                             "check --input-shape") from exc
    names = list(entry.outputs) or (["output"] if len(expected) == 1 else [f"output_{i}" for i in range(len(expected))])
    if len(names) != len(expected):
        raise GraphoptError(f"{entry.name}: {len(names)} output names for {len(expected)} outputs",
                            "give one name per output")
    return expected, names


def parse_input_shapes(items: tuple[str, ...] | list[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME=1,3,224,224`` strings (``--input-shape``), keeping their order."""
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        parts = [p.strip() for p in dims.split(",")]
        if not sep or not name.strip() or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise InputSpecError(f"--input-shape '{item}': expected NAME=D1,D2,... with positive integers",
                                 "e.g. --input-shape image=1,3,224,224")
        shapes[name.strip()] = tuple(int(p) for p in parts)
    return shapes


def load_factory(spec: str):
    """Import ``path/to/file.py`` and return what its ``factory`` function builds."""
    file, _, factory = spec.rpartition(":")
    if not file or not factory:
        raise GraphoptError(f"'{spec}': name the function that builds the model",
                            f"e.g. {spec.rstrip(':')}:make_model")
    path = Path(file)
    if not path.is_file():
        raise GraphoptError(f"{path}: no such file", "give path/to/file.py:factory")
    module_name = f"_graphopt_user_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise GraphoptError(f"{path}: cannot be imported as Python", "give a .py file")
    module = importlib.util.module_from_spec(module_spec)
    folder = str(path.resolve().parent)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    sys.path.insert(0, folder)  # so the file can import its neighbours
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise GraphoptError(f"{path}: importing it failed: {_first_line(exc)}",
                            "fix the file; --debug shows the traceback") from exc
    finally:
        sys.path.remove(folder)
    function = getattr(module, factory, None)
    if not callable(function):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module_name)
        raise GraphoptError(f"{path}: no function '{factory}'",
                            f"callables defined in the file: {', '.join(found)}" if found else "define it in the file")
    return function()


def _is_file_spec(text: str) -> bool:
    return ":" in text or text.endswith(".py")


def _import_torch():
    try:
        import torch
    except ImportError:
        raise GraphoptError("export needs PyTorch, which is not installed", INSTALL_HINT) from None
    return torch


@contextlib.contextmanager
def _eval_mode(module):
    """Every submodule in eval mode, restored afterwards.

    ``module.eval()`` alone is not enough: a wrapper may override ``train()`` and keep (or put)
    the model it wraps in training mode, so the flag is also cleared on each submodule.
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    for m, _ in flags:
        m.training = False
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def _quiet_torch():
    # The exporters warn about deprecations and missing torchvision ops, and torch.export prints
    # whole graphs when it fails: nothing the user can act on. Failures are reported as exceptions.
    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        for name in levels:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def _export(torch, module, args, input_names, output_names, axes, opset):
    """Returns (ModelProto, exporter name, why the dynamo exporter was not used or None)."""
    try:
        with _quiet_torch():
            program = torch.onnx.export(module, args, None, dynamo=True, verbose=False, input_names=input_names,
                                        output_names=output_names, opset_version=opset,
                                        dynamic_shapes=_dynamic_shapes(torch, input_names, axes))
            proto = program.model_proto
        # When it cannot convert to the requested opset, the dynamo exporter keeps its own, silently.
        if opset is None or _default_opset(proto) == opset:
            return proto, "dynamo", None
        reason = f"it wrote opset {_default_opset(proto)} instead of {opset}"
    except Exception as exc:  # torch.export and onnxscript raise many unrelated types
        reason = _first_line(_root_cause(exc))
    warnings.warn(f"the dynamo exporter failed ({reason}); using the TorchScript exporter",
                  ExportFallbackWarning, stacklevel=3)
    buffer = io.BytesIO()
    try:
        with _quiet_torch():
            torch.onnx.export(module, args, buffer, dynamo=False, input_names=input_names,
                              output_names=output_names, opset_version=opset or TORCHSCRIPT_DEFAULT_OPSET,
                              dynamic_axes={n: a for n, a in axes.items() if a} or None)
    except Exception as exc:
        raise GraphoptError(f"export failed: dynamo exporter: {reason}; TorchScript exporter: {_first_line(exc)}",
                            "--debug shows the traceback") from exc
    return onnx.load_from_string(buffer.getvalue()), "torchscript", reason


def _dynamic_shapes(torch, input_names, axes):
    """torch.export's spec of symbolic dims: one dict per input; a dim name shared by inputs is one Dim."""
    dims: dict[str, object] = {}
    specs = tuple({axis: dims.setdefault(name, torch.export.Dim(name)) for axis, name in axes[n].items()} or None
                  for n in input_names)
    return specs if any(specs) else None


def _leaves(value) -> list:
    """The tensors of a forward() result (a tensor, or nested tuples, lists and dicts of them)."""
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [value.numpy()] if hasattr(value, "numpy") else []


def _max_abs_diff(name: str, expected: np.ndarray, actual: np.ndarray) -> float:
    if expected.shape != actual.shape:
        raise GraphoptError(f"output '{name}': onnxruntime gives shape {list(actual.shape)}, "
                            f"torch {list(expected.shape)}", "the export is wrong; --debug for details")
    if expected.size == 0:
        return 0.0
    return float(np.max(np.abs(expected.astype(np.float64) - actual.astype(np.float64))))


def _external_data_file(path: Path) -> Path | None:
    header = onnx.load(str(path), load_external_data=False)
    uses_external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in header.graph.initializer)
    return path.with_name(path.name + ".data") if uses_external else None


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _dims(info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in info.type.tensor_type.shape.dim]


def _root_cause(exc: BaseException) -> BaseException:
    # The dynamo exporter wraps the error that names the problem in generic "step 1/3" errors.
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _first_line(exc: BaseException) -> str:
    text = _ANSI_ESCAPE.sub("", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
