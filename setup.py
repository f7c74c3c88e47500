"""Build script: the Cython kernels in kernels/ become the package graphopt.kernels.

Kernels are compiled without -march=native so that one build runs on any x86-64; ISA-specific
code paths carry their own target attributes (DESIGN.md, "Kernels").
"""
import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

EXTENSIONS = [
    Extension(
        "graphopt.kernels._packing",
        ["kernels/_packing.pyx"],
        include_dirs=[numpy.get_include()],
        extra_compile_args=["-O3"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]

setup(
    packages=find_packages(include=["graphopt", "graphopt.*"]) + ["graphopt.kernels", "graphopt.models"],
    package_dir={"graphopt.kernels": "kernels", "graphopt.models": "models"},
    # The zoo ships the trained digits-cnn and its data splits, so tests and the demo need no torch.
    package_data={"graphopt.models": ["*.onnx", "*.npz"]},
    # Generated C goes to build/, not beside the hand-written kernel sources.
    ext_modules=cythonize(EXTENSIONS, language_level=3, build_dir="build/cython"),
)
