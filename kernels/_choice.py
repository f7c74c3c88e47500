"""The ISA choice of the kernel modules that have an AVX-512 path and a portable one."""
import os


def avx512_or_portable(name, variable: str, avx512_supported: bool) -> str:
    """The path to run: ``name`` ("auto", "avx512", "portable"), else ``$variable``, else the
    best this CPU supports."""
    if name is None:
        name = os.environ.get(variable) or "auto"
    if name == "auto":
        return "avx512" if avx512_supported else "portable"
    if name not in ("avx512", "portable"):
        raise ValueError(f"isa must be one of auto, avx512, portable, got {name!r}")
    if name == "avx512" and not avx512_supported:
        raise ValueError("isa 'avx512': this CPU lacks AVX-512F")
    return name
