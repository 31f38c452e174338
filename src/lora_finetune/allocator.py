"""The memory allocator of a CPU run: what it does to RSS, and tcmalloc when installed.

Why it matters: every training step allocates and frees the same few GiB of activations.
glibc's malloc raises its mmap threshold as large blocks are freed (up to 32 MiB), after which
freed activations stay in its heaps, fragmented, and still count in the process's RSS -- what
the kernel's OOM killer and "free RAM" see. On the long-batch job (SmolLM2-135M, 4 x ~460
tokens) the peak RSS above the process's size at planning time was 10.0-10.8 GiB under glibc
and 6.5-7.0 GiB under tcmalloc, where our estimate (live memory) said 6.4 (bench/RESULTS.md,
"CPU speed"). So:

- memory planning multiplies the per-step part of the estimate (activations and logits) by
  `GLIBC_RSS_FACTOR` under glibc, and by 1 under tcmalloc/jemalloc or on a GPU;
- `lora-finetune train` re-executes itself with tcmalloc preloaded when the system has it
  (cli/__init__.py, with `find_tcmalloc` and `names_allocator` from here): 14% more tokens/s and
  the live peak as RSS;
- fixing glibc's threshold instead (`mallopt(M_MMAP_THRESHOLD, 128 KiB)`) made RSS follow live
  memory too, but training 38% slower (every block faulted in again each step): not used;
  gradient checkpointing is the cheaper way to fit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

GLIBC_RSS_FACTOR = 1.7
"""Peak RSS of a step's activations and logits under glibc's malloc / their live size: 1.58-1.69
measured on the long-batch job (bench/RESULTS.md)."""


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


ALLOCATOR_ENV = "LORA_FINETUNE_ALLOCATOR"
"""`auto` (default): `lora-finetune train` preloads tcmalloc when installed; `system`: it does not."""


def find_tcmalloc() -> str | None:
    """tcmalloc's shared library where the system has one (Debian/Ubuntu: libtcmalloc-minimal4)."""
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def names_allocator(preload: str) -> bool:
    """Whether an LD_PRELOAD value asks for a malloc replacement (tcmalloc, jemalloc, mimalloc ...)."""
    return "malloc" in preload


def preloaded_allocator() -> str | None:
    """LD_PRELOAD when it names a malloc replacement that is actually loaded (the dynamic linker
    skips, with a warning, a library it cannot load)."""
    preload = os.environ.get("LD_PRELOAD", "")
    if not names_allocator(preload):
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            maps = f.read()
    except OSError:
        return preload  # no /proc: trust the variable
    names = [os.path.basename(p) for p in preload.replace(":", " ").split() if names_allocator(p)]
    return preload if any(n and n in maps for n in names) else None


def rss_factor(on_gpu: bool) -> float:
    """How much more than live memory a CPU step's transient tensors keep resident."""
    if on_gpu or preloaded_allocator() or _glibc() is None:
        return 1.0
    return GLIBC_RSS_FACTOR


def allocator_note() -> str:
    """One line for the log: which allocator this CPU run uses, and how to get the faster one."""
    preload = preloaded_allocator()
    if preload and "tcmalloc" in preload:
        how = "preloaded by lora-finetune" if os.environ.get(ALLOCATOR_ENV) == "tcmalloc" else "LD_PRELOAD"
        return f"memory allocator: tcmalloc ({how}; {ALLOCATOR_ENV}=system keeps glibc's)"
    if preload:
        return f"memory allocator: {preload} (LD_PRELOAD)"
    return (
        "memory allocator: glibc's. Tip: with tcmalloc (Debian/Ubuntu: apt install "
        "libtcmalloc-minimal4) CPU training measured 14% faster with a 35% lower peak RSS; "
        "`lora-finetune train` preloads it when installed"
    )


def release_freed_memory() -> None:
    """Give the heap's free memory back to the kernel (after training)."""
    libc = _glibc()
    if libc is not None and not preloaded_allocator():
        try:
            libc.malloc_trim(0)
        except (AttributeError, OSError):
            pass


__all__ = [
    "ALLOCATOR_ENV",
    "GLIBC_RSS_FACTOR",
    "allocator_note",
    "find_tcmalloc",
    "names_allocator",
    "preloaded_allocator",
    "release_freed_memory",
    "rss_factor",
]
