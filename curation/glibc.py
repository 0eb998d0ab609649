"""glibc's malloc, where the project tunes it (no-ops on other C libraries).

Two settings matter here: `M_PERTURB` (fastText training needs zero-filled allocations, see
`curation.classifier`) and the thresholds at which freed memory goes back to the operating system
(the CPU trainer frees and re-allocates the same large tensors every step, see `training.trainer`).
"""

from __future__ import annotations

import ctypes
import functools
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_PERTURB = -6
MAX_INT = 2**31 - 1


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The process's glibc, or None off Linux/glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def mallopt(param: int, value: int) -> bool:
    """glibc's `mallopt`; False when there is no glibc or it refuses the value."""
    lib = libc()
    return bool(lib is not None and lib.mallopt(param, ctypes.c_int(value)))
