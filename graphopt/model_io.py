"""Reading, validating and writing ONNX files; conversion to and from ``gs.Graph``.

``onnx.ModelProto`` appears only here, at the load/save boundary (DESIGN.md). Loading refuses,
with a one-line :class:`GraphoptError`, anything that is not a well-formed model this onnx can
handle, and never reads external data that lives outside the model's folder. Saving writes to a
temporary folder beside the target and renames into place, so a failed or interrupted save leaves
no half-written output.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx.external_data_helper import ExternalDataInfo

from graphopt.errors import (
    ModelLoadError,
    OutputPathError,
    UnsafeExternalDataError,
    UnsupportedModelError,
)

# protobuf cannot serialise a message of 2 GiB or more: larger models need external data.
PROTOBUF_LIMIT_BYTES = 2 << 30
# Margin for the graph structure itself when deciding whether initializers fit in the protobuf.
EXTERNAL_DATA_MARGIN_BYTES = 64 << 20
DEFAULT_DOMAINS = ("", "ai.onnx")


def load_model(path: str | os.PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Load and validate an ONNX model, with its external data if it has any."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file", "check the path")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file", "pass the path of an .onnx file")
    data = path.read_bytes()
    model = _parse(path, data)
    check_versions(model, path)
    for tensor in _external_tensors(model):
        _resolve_external_location(tensor, path.parent, path)
    if any(True for _ in _external_tensors(model)):
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    if check:
        check_model(model, path)
    return model


def _parse(path: Path, data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        if _looks_like_onnx(data):
            raise ModelLoadError(f"{path}: the file is truncated or corrupt ({exc})",
                                 "re-export or re-download the model") from exc
        raise ModelLoadError(f"{path}: not an ONNX model", "pass an .onnx file") from exc
    if not model.HasField("graph") or model.ir_version == 0:
        if _looks_like_onnx(data) and len(data) > 2:
            raise ModelLoadError(f"{path}: the file is truncated or corrupt (no graph)",
                                 "re-export or re-download the model")
        raise ModelLoadError(f"{path}: not an ONNX model", "pass an .onnx file")
    return model


def _looks_like_onnx(data: bytes) -> bool:
    # A serialised ModelProto starts with field 1 (ir_version, varint): tag byte 0x08,
    # followed by a small IR version.
    return len(data) >= 2 and data[0] == 0x08 and 0 < data[1] < 64


def check_versions(model: onnx.ModelProto, path: Path | str = "<model>") -> None:
    """Refuse models newer than the installed onnx package understands."""
    if model.ir_version > onnx.IR_VERSION:
        raise UnsupportedModelError(
            f"{path}: IR version {model.ir_version} is newer than the installed onnx "
            f"{onnx.__version__} supports (IR {onnx.IR_VERSION})",
            "upgrade onnx: pip install -U onnx")
    latest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in DEFAULT_DOMAINS and opset.version > latest:
            raise UnsupportedModelError(
                f"{path}: opset {opset.version} is newer than the installed onnx "
                f"{onnx.__version__} supports (opset {latest})",
                "upgrade onnx: pip install -U onnx")


def check_model(model: onnx.ModelProto, path: Path | str = "<model>") -> None:
    """Run the ONNX checker; its first message line becomes the error."""
    try:
        if model.ByteSize() < PROTOBUF_LIMIT_BYTES:
            onnx.checker.check_model(model)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                tmp_path = write_with_external_data(model, Path(tmp))
                onnx.checker.check_model(str(tmp_path))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path}: the ONNX checker rejects the model: {first}",
                             "fix the exporter or the graph; --no-check skips this check") from exc


def _all_graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_graphs(sub)


def _all_tensors(model: onnx.ModelProto):
    for graph in _all_graphs(model.graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def _external_tensors(model: onnx.ModelProto):
    return (t for t in _all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL)


def _resolve_external_location(tensor: onnx.TensorProto, base: Path, model_path: Path) -> Path:
    """Return the data file of ``tensor`` after checking that it stays inside ``base``."""
    location = ExternalDataInfo(tensor).location
    where = f"{model_path}: tensor '{tensor.name}' has external data at '{location}'"
    hint = "external data must be a file inside the model's folder"
    if not location:
        raise ModelLoadError(f"{model_path}: tensor '{tensor.name}' has external data with no location",
                             "re-save the model with its external data")
    if os.path.isabs(location) or Path(location).drive:
        raise UnsafeExternalDataError(f"{where}, an absolute path; refused", hint)
    if ".." in Path(location).parts:
        raise UnsafeExternalDataError(f"{where}, which escapes the model's folder; refused", hint)
    base_real = base.resolve()
    target = (base / location).resolve()
    if target != base_real and base_real not in target.parents:
        raise UnsafeExternalDataError(f"{where}, which links outside the model's folder; refused", hint)
    if not target.is_file():
        raise ModelLoadError(f"{where}, which does not exist",
                             "copy the data file next to the model, keeping its name")
    return target


def write_with_external_data(model: onnx.ModelProto, folder: Path) -> Path:
    """Write ``model`` (left unchanged) as ``folder/model.onnx`` + one data file, for tools that
    need a path because the model is too large for one protobuf."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    path = folder / "model.onnx"
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data")
    return path


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by all tensors in the model (initializers and constant attributes)."""
    total = 0
    for t in _all_tensors(model):
        if t.HasField("raw_data"):
            total += len(t.raw_data)
        else:
            total += 8 * (len(t.float_data) + len(t.int32_data) + len(t.int64_data)
                          + len(t.double_data) + len(t.uint64_data)) + sum(len(s) for s in t.string_data)
    return total


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None,
               protect: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Write ``model`` to ``path`` atomically.

    ``external_data``: ``None`` chooses automatically (external above 2 GiB), ``True`` forces a
    ``<name>.data`` file beside the model, ``False`` forbids it. ``protect`` lists files (the inputs)
    that must not be overwritten.
    """
    path = Path(path)
    for other in protect:
        if path.exists() and Path(other).exists() and os.path.samefile(path, other):
            raise OutputPathError(f"{path}: refusing to overwrite the input model",
                                  "choose another -o path, or pass --in-place")
    if path.is_dir():
        raise OutputPathError(f"{path}: is a folder", "give a file name, e.g. -o model.opt.onnx")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"{path}: folder '{parent}' does not exist", "create it first")
    big = tensor_bytes(model) + EXTERNAL_DATA_MARGIN_BYTES >= PROTOBUF_LIMIT_BYTES
    if external_data is False and big:
        raise OutputPathError(f"{path}: the model is over 2 GiB and must use external data",
                              "drop --no-external-data")
    use_external = big if external_data is None else external_data
    data_name = path.name + ".data"
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=".graphopt-", dir=parent))
    except OSError as exc:
        raise OutputPathError(f"{path}: cannot write here ({exc.strerror})", "choose another -o path") from exc
    try:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        if use_external:
            # On request every tensor moves out; automatically, small ones stay inline.
            onnx.save_model(copy, str(tmp_dir / path.name), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name,
                            size_threshold=0 if external_data else 1024)
            os.replace(tmp_dir / data_name, parent / data_name)
        else:
            onnx.save_model(copy, str(tmp_dir / path.name))
        os.replace(tmp_dir / path.name, path)
    except OSError as exc:
        raise OutputPathError(f"{path}: write failed ({exc.strerror})", "check free space and permissions") from exc
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import a model into onnx-graphsurgeon's IR, the one that passes edit."""
    return gs.import_onnx(model)


def to_model(graph: gs.Graph, like: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Export a graph; metadata and IR version are taken from ``like`` (the input model)."""
    model = gs.export_onnx(graph, do_type_check=False)
    # IR 4 is the first that lets initializers not be graph inputs, which is how gs exports them.
    needed = max(4, onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True))
    model.ir_version = max(like.ir_version if like is not None else model.ir_version, needed)
    if like is not None:
        model.producer_name = like.producer_name
        model.producer_version = like.producer_version
        model.domain = like.domain
        model.model_version = like.model_version
        model.doc_string = like.doc_string
        del model.metadata_props[:]
        model.metadata_props.extend(like.metadata_props)
    return model
