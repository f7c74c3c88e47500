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

EXTENSIONS = [
    Extension(
        "graphopt.kernels._packing",
        ["kernels/_packing.pyx"],
        include_dirs=[numpy.get_include()],
        extra_compile_args=KERNEL_FLAGS,
        define_macros=NUMPY_MACROS,
    ),
    Extension(
        "graphopt.kernels._qgemm",
        ["kernels/_qgemm.pyx", "kernels/qgemm.c", "kernels/layout.c"],
        include_dirs=[numpy.get_include(), "kernels"],
        depends=["kernels/qgemm.h", "kernels/layout.h", "kernels/_epilogue.pxi"],
        # OpenMP for prange: tiles of the product run on `threads` cores with the GIL released.
        extra_compile_args=KERNEL_FLAGS + ["-fopenmp"],
        extra_link_args=["-fopenmp"],
        define_macros=NUMPY_MACROS,
    ),
    Extension(
        "graphopt.kernels._conv",
        # The convolutions run qgemm.c's micro-kernels and epilogue (a copy linked in here).
        ["kernels/_conv.pyx", "kernels/qgemm.c", "kernels/depthwise.c", "kernels/layout.c"],
        include_dirs=[numpy.get_include(), "kernels"],
        depends=["kernels/qgemm.h", "kernels/depthwise.h", "kernels/layout.h",
                 "kernels/_epilogue.pxi"],
        extra_compile_args=KERNEL_FLAGS + ["-fopenmp"],
        extra_link_args=["-fopenmp"],
        define_macros=NUMPY_MACROS,
    ),
    Extension(
        "graphopt.kernels._qmatmul",
        # uint8 x uint8 activation products (attention): AVX-512 VNNI, b packed per call.
        ["kernels/_qmatmul.pyx", "kernels/qmatmul.c"],
        include_dirs=[numpy.get_include(), "kernels"],
        depends=["kernels/qmatmul.h"],
        extra_compile_args=KERNEL_FLAGS,
        define_macros=NUMPY_MACROS,
    ),
    Extension(
        "graphopt.kernels._qadd",
        # onnxruntime's QLinearAdd on uint8 rows, AVX-512 with explicit FMAs.
        ["kernels/_qadd.pyx", "kernels/qadd.c"],
        include_dirs=[numpy.get_include(), "kernels"],
        depends=["kernels/qadd.h"],
        extra_compile_args=KERNEL_FLAGS,
        define_macros=NUMPY_MACROS,
    ),
    Extension(
        "graphopt.kernels._sgemm",
        # fp32 products: packed AVX-512 FMA micro-kernels, the convolutions' implicit GEMM.
        ["kernels/_sgemm.pyx", "kernels/sgemm.c"],
        include_dirs=[numpy.get_include(), "kernels"],
        depends=["kernels/sgemm.h", "kernels/_workers.pxi"],
        extra_compile_args=KERNEL_FLAGS,
        define_macros=NUMPY_MACROS,
    ),
    Extension(
        "graphopt.kernels._dwconv",
        # fp32 depthwise convolution (one filter per channel), AVX-512 along the output rows.
        ["kernels/_dwconv.pyx", "kernels/dwconv_f32.c"],
        include_dirs=[numpy.get_include(), "kernels"],
        depends=["kernels/dwconv_f32.h", "kernels/_workers.pxi"],
        extra_compile_args=KERNEL_FLAGS,
        define_macros=NUMPY_MACROS,
    ),
    Extension(
        "graphopt.kernels._pool",
        # 2-D max pooling of float32 / uint8 / int8 planes, AVX-512 permutes along output rows.
        ["kernels/_pool.pyx", "kernels/pool.c"],
        include_dirs=[numpy.get_include(), "kernels"],
        depends=["kernels/pool.h", "kernels/_workers.pxi"],
        extra_compile_args=KERNEL_FLAGS,
        define_macros=NUMPY_MACROS,
    ),
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
