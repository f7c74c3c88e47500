# Shared by the kernel modules that split work over threads (textual include): qgemm.c's worker
# pool, reached through the capsule that _qgemm exports, so that every kernel of a process
# shares one pool. OpenMP's regions ended with a barrier that waited for the slowest thread: on a
# shared machine, a worker that the scheduler started late held up every product and
# convolution (see qg_parallel_for in qgemm.h).
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.stdint cimport int64_t

ctypedef int (*_task_fn)(void *ctx, int64_t i) noexcept nogil
ctypedef int (*_parallel_for_fn)(int threads, int64_t n, _task_fn fn, void *ctx) noexcept nogil

from graphopt.kernels._qgemm import WORKER_POOL as _WORKER_POOL

# fn(ctx, i) for i in range(n) on up to `threads` threads; returns 1 if any call returned nonzero
cdef _parallel_for_fn parallel_for = <_parallel_for_fn>PyCapsule_GetPointer(_WORKER_POOL, b"graphopt.kernels.parallel_for")
