"""Build script: the Cython kernels in kernels/ become the package graphopt.kernels.

Kernels are compiled without -march=native so that one build runs on any x86-64; ISA-specific
code paths carry their own target attributes (DESIGN.md, "Kernels").
"""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

# -ffp-contract=off: the epilogue's float32 multiply must not fuse into an FMA, or the kernels
# would round differently from the numpy reference they are tested against bit for bit.
KERNEL_FLAGS = ["-O3", "-ffp-contract=off"]
NUMPY_MACROS = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]


def kernel(name, sources=(), depends=()):
    """The extension graphopt.kernels.<name>: kernels/<name>.pyx and the C ``sources`` of kernels/.
    No OpenMP: the kernels split work over qgemm.c's worker pool (kernels/_workers.pxi)."""
    return Extension(f"graphopt.kernels.{name}", [f"kernels/{name}.pyx"] + [f"kernels/{c}" for c in sources],
                     include_dirs=[numpy.get_include(), "kernels"], depends=[f"kernels/{d}" for d in depends],
                     extra_compile_args=KERNEL_FLAGS, define_macros=NUMPY_MACROS)


EXTENSIONS = [
    kernel("_packing"),
    # uint8 x int8 GEMM; its tiles (and every other kernel's) run on qgemm.c's worker pool, which
    # _qgemm exports to the other modules (kernels/_workers.pxi).
    kernel("_qgemm", ["qgemm.c", "layout.c"], ["qgemm.h", "layout.h", "_epilogue.pxi"]),
    # The convolutions run qgemm.c's micro-kernels and epilogue (a copy linked in here).
    kernel("_conv", ["qgemm.c", "depthwise.c", "layout.c"], ["qgemm.h", "depthwise.h", "layout.h", "_epilogue.pxi"]),
    # uint8 x uint8 activation products (attention): AVX-512 VNNI, b packed per call.
    kernel("_qmatmul", ["qmatmul.c"], ["qmatmul.h"]),
    # uint8 elementwise: onnxruntime's QLinearAdd on rows (explicit FMAs), 256-entry lookups (VBMI).
    kernel("_bytewise", ["bytewise.c"], ["bytewise.h"]),
    # fp32 products: packed AVX-512 FMA micro-kernels, the convolutions' implicit GEMM.
    kernel("_sgemm", ["sgemm.c"], ["sgemm.h", "_workers.pxi"]),
    # fp32 depthwise convolution (one filter per channel), AVX-512 along the output rows.
    kernel("_dwconv", ["dwconv_f32.c"], ["dwconv_f32.h", "_workers.pxi"]),
    # 2-D max pooling of float32 / uint8 / int8 planes, AVX-512 permutes along output rows.
    kernel("_pool", ["pool.c"], ["pool.h", "_workers.pxi"]),
]

# GRAPHOPT_BUILD_ONLY=name[,name]: build just those extensions (a kernel's edit-build-test loop).
_ONLY = [n for n in os.environ.get("GRAPHOPT_BUILD_ONLY", "").split(",") if n]
if _ONLY:
    EXTENSIONS = [e for e in EXTENSIONS if e.name.rsplit(".", 1)[-1] in _ONLY]

setup(
    packages=find_packages(include=["graphopt", "graphopt.*"]) + ["graphopt.kernels", "graphopt.models"],
    package_dir={"graphopt.kernels": "kernels", "graphopt.models": "models"},
    # The zoo ships the trained digits-cnn and its data splits, so tests and the demo need no torch.
    package_data={"graphopt.models": ["*.onnx", "*.npz"]},
    # Generated C goes to build/, not beside the hand-written kernel sources.
    ext_modules=cythonize(EXTENSIONS, language_level=3, build_dir="build/cython"),
)
