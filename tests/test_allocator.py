"""allocator.py: what the allocator does to RSS, and how planning accounts for it."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from lora_finetune import allocator

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc"
)

# Freed 8 MiB blocks with small live allocations between them: glibc (after raising its mmap
# threshold on the first free) keeps the holes in its heap, where they still count in RSS. This
# is why planning scales the per-step estimate by GLIBC_RSS_FACTOR under glibc.
PROBE = """
import re
import numpy as np
from lora_finetune.allocator import release_freed_memory

def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024

warm = np.ones(8 * 2**20, dtype=np.uint8)
del warm
before = rss()
blocks, keep = [], []
for _ in range(10):
    blocks.append(np.ones(8 * 2**20, dtype=np.uint8))
    keep.append(bytearray(64 * 1024))
del blocks
kept = rss() - before
release_freed_memory()
print(kept, rss() - before)
"""


@glibc_only
def test_glibc_keeps_freed_activations_resident_until_released():
    env = {k: v for k, v in __import__("os").environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=env)
    kept, after_trim = map(int, out.stdout.split())
    assert kept >= 40  # of the 80 MiB freed, most stays resident
    assert after_trim < kept - 30  # malloc_trim (run after training) hands it back


def test_rss_factor_follows_the_allocator(monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    glibc = allocator._glibc() is not None
    assert allocator.rss_factor(on_gpu=False) == (allocator.GLIBC_RSS_FACTOR if glibc else 1.0)
    assert allocator.rss_factor(on_gpu=True) == 1.0  # the GPU's caching allocator is what is measured
    monkeypatch.setattr(allocator, "preloaded_allocator", lambda: "libtcmalloc_minimal.so.4")
    assert allocator.rss_factor(on_gpu=False) == 1.0


def test_planning_scales_the_per_step_part_under_glibc(tiny_qwen3, tmp_path, monkeypatch):
    import torch

    from lora_finetune.tools.estimate import Setup, estimate_memory, load_shape
    from lora_finetune.training import planning

    from helpers import tiny_config

    targets = ["q_proj", "v_proj"]
    cfg = tiny_config(tiny_qwen3, tmp_path / "x", batch_size=4, max_length=64, memory_budget="1000GB", dropout=0.05)
    est = estimate_memory(
        load_shape(str(tiny_qwen3)),
        Setup(dtype="fp32", r=cfg.r, target_modules=targets, batch_size=4, max_length=64, device="cpu"),
    )
    monkeypatch.setattr(planning, "rss_factor", lambda on_gpu: 1.0)
    live = planning.plan_memory(cfg, str(tiny_qwen3), targets, 64, torch.float32)
    monkeypatch.setattr(planning, "rss_factor", lambda on_gpu: 1.7)
    glibc = planning.plan_memory(cfg, str(tiny_qwen3), targets, 64, torch.float32)
    assert live.estimate == pytest.approx(est.total)
    assert glibc.estimate == pytest.approx(est.total + 0.7 * (est.activations + est.logits))
    assert glibc.rss_factor == 1.7 and live.rss_factor == 1.0


@glibc_only
def test_training_on_a_cpu_names_the_allocator_and_releases_memory(tiny_qwen3, tmp_path, monkeypatch, caplog):
    import logging

    import lora_finetune.training.run as run
    from lora_finetune.training import train

    from helpers import tiny_config

    calls = []
    monkeypatch.setattr(run, "release_freed_memory", lambda: calls.append("release"))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    with caplog.at_level(logging.INFO, logger="lora_finetune"):
        res = train(tiny_config(tiny_qwen3, tmp_path / "out", steps=1, eval_fraction=0.0))
    assert calls == ["release"]
    assert "memory allocator: glibc's" in caplog.text and "libtcmalloc-minimal4" in caplog.text
    assert res.metrics["memory"]["allocator_rss_factor"] == allocator.GLIBC_RSS_FACTOR


def test_allocator_note_names_a_preloaded_allocator(monkeypatch):
    # pretend the library is mapped into this process
    real_open = open

    def fake_open(path, *a, **kw):
        if path == "/proc/self/maps":
            import io

            return io.StringIO("7f00 r-xp /usr/lib/libtcmalloc_minimal.so.4\n7f01 r-xp /usr/lib/libjemalloc.so.2\n")
        return real_open(path, *a, **kw)

    monkeypatch.setattr("builtins.open", fake_open)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    monkeypatch.setenv("LORA_FINETUNE_ALLOCATOR", "tcmalloc")
    assert allocator.allocator_note().startswith("memory allocator: tcmalloc (preloaded by lora-finetune")
    monkeypatch.delenv("LORA_FINETUNE_ALLOCATOR")
    assert "tcmalloc (LD_PRELOAD" in allocator.allocator_note()
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert allocator.allocator_note() == "memory allocator: /usr/lib/libjemalloc.so.2 (LD_PRELOAD)"


def test_a_preload_that_did_not_load_is_not_claimed(monkeypatch):
    """ld.so skips a library it cannot load; then glibc's malloc is what runs."""
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent/libtcmalloc_minimal.so.4")
    assert allocator.preloaded_allocator() is None
    assert allocator.allocator_note().startswith("memory allocator: glibc's")
