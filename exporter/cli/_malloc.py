"""The C allocator of a command that runs PyTorch forwards, told to keep the memory it frees.

A YOLO forward at 640 allocates and frees tensors of tens of MB layer after layer (a float64 forward
of yolov5s: an 88 MB im2col buffer for its first convolution alone). glibc serves every block above
its mmap threshold (at most 32 MB by default) with a fresh ``mmap`` and unmaps it on ``free``, and it
gives the top of the heap back whenever more than twice that is free; each new block is then faulted
in and zeroed page by page again. With both thresholds at 1 GiB the freed memory is reused instead:
on ``yexport check`` of yolov5s at 640 (2 cores) system time went from 1.0-1.1 s to 0.3-0.4 s, wall
time 4.1-4.7 s -> 3.8 s for the parity part, with the same peak memory (764-773 MB, 756-802 MB); on
yolov5x, system time 7.5-10.2 s -> 3.5-3.7 s for the whole check, peak 2913-2920 -> 2932-2967 MB.

Only the CLI does this, for the commands that build a PyTorch model: it changes the whole process's
allocator, which a library must leave to its caller. Elsewhere than glibc nothing is changed.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30

_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds to :data:`KEEP_BYTES` (once per process). True when
    the allocator took both; False where there is no glibc ``mallopt`` or it refused."""
    global _done
    if _done:
        return True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no mallopt (macOS), no C library by None (Windows)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # both, or the trim threshold alone would switch glibc's dynamic mmap threshold off (every block
    # above 128 KiB mmapped: measured five times the system time)
    _done = mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) == 1
    return _done
