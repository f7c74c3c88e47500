"""The model zoo: PyTorch models registered by name, with their input specs and sample inputs.

Installed as the package ``graphopt.models``. Importing it does not import torch: the registry
(names, input specs, sample-input generators) and the shipped files of ``digits-cnn`` work without
it, and a model's PyTorch definition is imported only when :meth:`ZooEntry.build` is called.

Shipped beside this file (regenerate with ``make models``):

- ``digits_cnn.onnx``: the trained ``digits-cnn`` (fp32, dynamic batch);
- ``digits_test.npz``: its labelled held-out test split (``image``, ``label``);
- ``digits_calib.npz``: a separate calibration split (``image`` only, so every array feeds an input).
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from graphopt.errors import GraphoptError

HERE = Path(__file__).resolve().parent
DIGITS_ONNX = HERE / "digits_cnn.onnx"
DIGITS_TEST = HERE / "digits_test.npz"
DIGITS_CALIB = HERE / "digits_calib.npz"


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """One input of a zoo model: its ONNX name, the example shape used for export, and dtype.

    ``dynamic`` maps an axis to the name of its symbolic dim in the exported model; the other
    axes are fixed at their example size. Sample values are drawn uniformly from
    ``[low, high)`` (integers: ``high`` excluded) or, with ``low is None``, from N(0, 1).
    """
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    dynamic: dict[int, str] = dataclasses.field(default_factory=dict)
    low: float | None = None
    high: float | None = None

    def onnx_dims(self) -> list[int | str]:
        return [self.dynamic.get(axis, size) for axis, size in enumerate(self.shape)]

    def sample(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        dtype = np.dtype(self.dtype)
        if dtype.kind in "iu":
            return rng.integers(self.low or 0, self.high or 2, shape).astype(dtype)
        if self.low is None:
            return rng.standard_normal(shape).astype(dtype)
        return rng.uniform(self.low, self.high, shape).astype(dtype)


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """A registered model: how to build it and what it takes and returns."""
    name: str
    summary: str
    factory: str  # "module:function" inside this package; importing the module imports torch
    inputs: tuple[ModelInput, ...]
    outputs: tuple[str, ...]
    # (entry, shapes by input name, rng) -> feeds; None draws each input from its ModelInput
    sampler: Callable[[ZooEntry, dict[str, tuple[int, ...]], np.random.Generator], dict[str, np.ndarray]] | None = None
    # The factory takes ``input_shapes=`` (layer sizes that depend on the input size).
    shape_dependent: bool = False

    def build(self, input_shapes: dict[str, tuple[int, ...]] | None = None, **kwargs):
        """The PyTorch module, in eval mode, sized for ``input_shapes`` if it depends on them (imports torch)."""
        module_name, _, function = self.factory.partition(":")
        module = importlib.import_module(f".{module_name}", __name__)
        if self.shape_dependent:
            kwargs["input_shapes"] = self.input_shapes(input_shapes)
        return getattr(module, function)(**kwargs).eval()

    def input_shapes(self, overrides: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple[int, ...]]:
        """Example shape of every input, with ``overrides`` (checked against the spec) applied."""
        shapes = {i.name: i.shape for i in self.inputs}
        for name, shape in (overrides or {}).items():
            if name not in shapes:
                raise GraphoptError(f"{self.name}: no input named '{name}'",
                                    f"its inputs: {', '.join(shapes)}")
            if len(shape) != len(shapes[name]):
                raise GraphoptError(f"{self.name}: input '{name}' has rank {len(shapes[name])}, "
                                    f"got shape {list(shape)}", f"e.g. {name}={','.join(map(str, shapes[name]))}")
            shapes[name] = tuple(shape)
        return shapes

    def sample_inputs(self, shapes: dict[str, tuple[int, ...]] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded example inputs, keyed by ONNX input name (numpy; no torch needed)."""
        shapes = self.input_shapes(shapes)
        rng = np.random.default_rng(seed)
        if self.sampler is not None:
            return self.sampler(self, shapes, rng)
        return {i.name: i.sample(shapes[i.name], rng) for i in self.inputs}


def _bert_inputs(entry: ZooEntry, shapes: dict[str, tuple[int, ...]], rng: np.random.Generator):
    # Every row after the first is padded for a random tail, so the attention mask matters.
    ids_spec = entry.inputs[0]
    ids = ids_spec.sample(shapes["input_ids"], rng)
    batch, seq = shapes["attention_mask"]
    lengths = np.concatenate([[seq], rng.integers(1, seq + 1, batch - 1)])
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def _digits_inputs(entry: ZooEntry, shapes: dict[str, tuple[int, ...]], rng: np.random.Generator):
    # Real digits when the shipped test set is there; uniform noise in the same range otherwise.
    shape = shapes["image"]
    if DIGITS_TEST.is_file() and shape[1:] == (1, 8, 8):
        images = np.load(DIGITS_TEST)["image"]
        return {"image": images[rng.choice(len(images), shape[0], replace=shape[0] > len(images))]}
    return {"image": entry.inputs[0].sample(shape, rng)}


_BATCH = {0: "batch"}
BERT_VOCAB = 30522

ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in [
    ZooEntry("simplenet", "small CNN: conv3x3 3->64, conv3x3 64->128 (ReLU, 2x2 max pool), fc->1000, fc->10",
             "simplenet:simplenet", (ModelInput("image", (1, 3, 32, 32)),), ("logits",), shape_dependent=True),
    ZooEntry("digits-cnn", "CNN trained on sklearn's 8x8 digits (weights from the shipped digits_cnn.onnx)",
             "digits_cnn:digits_cnn", (ModelInput("image", (1, 1, 8, 8), dynamic=_BATCH, low=0.0, high=1.0),),
             ("logits",), _digits_inputs),
    ZooEntry("resnet18", "ResNet-18 layout (BasicBlock, BatchNorm, residual Add), 224x224, random init",
             "resnet:resnet18", (ModelInput("image", (1, 3, 224, 224)),), ("logits",)),
    ZooEntry("mobilenetv3", "MobileNetV3-Small layout (depthwise conv, HardSwish, squeeze-excite), random init",
             "mobilenetv3:mobilenetv3_small", (ModelInput("image", (1, 3, 224, 224)),), ("logits",)),
    ZooEntry("bert-mini", "BERT encoder: 4 layers, hidden 256, 4 heads, GELU, LayerNorm; dynamic batch and sequence",
             "bert_mini:bert_mini",
             (ModelInput("input_ids", (2, 16), "int64", {0: "batch", 1: "sequence"}, 0, BERT_VOCAB),
              ModelInput("attention_mask", (2, 16), "int64", {0: "batch", 1: "sequence"}, 0, 2)),
             ("last_hidden_state",), _bert_inputs),
    ZooEntry("yolo-head", "tiny detector; one output [batch, 400, 4+80]: boxes in 0-640, class scores in 0-1",
             "yolo_head:yolo_head", (ModelInput("image", (1, 3, 640, 640), low=0.0, high=1.0),), ("detections",)),
    ZooEntry("mlp", "MLP 784->256->128->10 with ReLU", "mlp:mlp",
             (ModelInput("features", (1, 784), dynamic=_BATCH),), ("logits",)),
]}


def names() -> list[str]:
    return list(ZOO)


def get_entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise GraphoptError(f"unknown model '{name}'",
                            f"zoo models: {', '.join(ZOO)}; or give path/to/file.py:factory") from None


def load_digits_split(which: str) -> dict[str, np.ndarray]:
    """The shipped ``test`` (image, label) or ``calib`` (image) split of the digits data."""
    path = {"test": DIGITS_TEST, "calib": DIGITS_CALIB}.get(which)
    if path is None:
        raise GraphoptError(f"unknown digits split '{which}'", "use 'test' or 'calib'")
    if not path.is_file():
        raise GraphoptError(f"{path}: missing", "regenerate the shipped files with: make models")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}
