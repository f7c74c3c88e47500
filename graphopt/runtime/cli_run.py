"""``graphopt run MODEL --input feeds.npz -o outputs.npz``: run a model on either backend."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from graphopt.errors import InputSpecError, OutputPathError
from graphopt.feeds import read_npz
from graphopt.model_io import load_model

BACKENDS = ("graphopt", "onnxruntime")


def write_outputs(outputs: dict[str, np.ndarray], path: Path, model_path: Path, feeds_path: Path) -> None:
    """Write an .npz atomically; never over the model or the inputs."""
    target = path.resolve()
    if target in (model_path.resolve(), feeds_path.resolve()):
        raise OutputPathError(f"{path}: the output would overwrite an input file", "choose another -o path")
    if not target.parent.is_dir():
        raise OutputPathError(f"{path}: folder {target.parent} does not exist", "create it first")
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **outputs)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_command(model: Path, inputs: Path, output: Path, backend: str = "graphopt", threads: int = 1) -> dict:
    """Run ``model`` on ``inputs`` with ``backend`` and write its outputs to ``output``.

    Returns a summary: backend, threads, seconds of the run itself, and each output's shape/dtype.
    """
    if backend not in BACKENDS:
        raise InputSpecError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    onnx_model = load_model(model)
    feeds = read_npz(inputs, "--input")
    if backend == "graphopt":
        from graphopt.runtime import Session
        session = Session(onnx_model, threads=threads)
        names = [o.name for o in session.get_outputs()]
        start = time.perf_counter()
        values = session.run(None, feeds)
    else:
        from graphopt.oracle import ort_session, run_oracle
        session = ort_session(onnx_model, threads=threads, optimize=True)
        start = time.perf_counter()
        result = run_oracle(onnx_model, feeds, session=session)
        names, values = list(result), list(result.values())
    seconds = time.perf_counter() - start
    outputs = dict(zip(names, values))
    write_outputs(outputs, output, model, inputs)
    return {"backend": backend, "threads": threads, "seconds": seconds, "output": str(output),
            "outputs": {n: {"shape": list(v.shape), "dtype": str(v.dtype)} for n, v in outputs.items()}}
