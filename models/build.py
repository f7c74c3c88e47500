"""Regenerate the shipped digits files: ``python -m graphopt.models.build`` (``make models``).

Splits sklearn's digits (1,797 images) with a fixed seed into train / calibration / test, trains
``digits-cnn`` on the train split, exports it with a dynamic batch and writes the two ``.npz``
splits, keyed by the model's input name.
"""
from __future__ import annotations

import sys

import numpy as np

from . import DIGITS_CALIB, DIGITS_ONNX, DIGITS_TEST

SEED = 0
TEST_SIZE = 360
CALIB_SIZE = 200
MIN_ACCURACY = 0.97


def digits_splits(seed: int = SEED) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    from .digits_cnn import PIXEL_MAX

    digits = load_digits()
    images = (digits.images / PIXEL_MAX).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    test, calib, train = np.split(order, [TEST_SIZE, TEST_SIZE + CALIB_SIZE])
    return {name: (images[idx], labels[idx]) for name, idx in [("train", train), ("calib", calib), ("test", test)]}


def main() -> int:
    import onnxruntime as ort
    import torch

    from graphopt.export import export_model

    from .digits_cnn import train_digits_cnn

    torch.set_num_threads(1)  # one thread: the same weights on any machine of the same build
    splits = digits_splits()
    model = train_digits_cnn(*splits["train"], seed=SEED)
    result = export_model(model, DIGITS_ONNX, input_shapes={"image": (1, 1, 8, 8)}, dynamic_batch=True,
                          output_names=["logits"])
    test_images, test_labels = splits["test"]
    np.savez_compressed(DIGITS_TEST, image=test_images, label=test_labels)
    np.savez_compressed(DIGITS_CALIB, image=splits["calib"][0])
    session = ort.InferenceSession(str(DIGITS_ONNX), providers=["CPUExecutionProvider"])
    accuracy = float((session.run(None, {"image": test_images})[0].argmax(1) == test_labels).mean())
    print(f"wrote {DIGITS_ONNX.name} ({result.exporter}, max abs diff vs torch {result.max_abs_diff:.2e}), "
          f"{DIGITS_TEST.name} ({len(test_labels)} images), {DIGITS_CALIB.name} ({CALIB_SIZE} images); "
          f"test accuracy on onnxruntime {accuracy:.4f}")
    if accuracy < MIN_ACCURACY:
        print(f"error: test accuracy {accuracy:.4f} is below {MIN_ACCURACY}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
