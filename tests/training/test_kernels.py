"""liger-kernel is scoped to the run that asked for it; attention kernels are chosen per run.

liger's `apply_liger_kernel_to_<arch>(model=...)` patches the instance *and* transformers'
module globals (`modeling_qwen3.Qwen3RMSNorm`, `.Qwen3MLP`, `.apply_rotary_pos_emb`, and in
older releases the class's `forward`). Left in place, every Qwen3 built later in the process
runs Triton kernels: on an H200, `train` on CUDA then `merge` on the CPU failed with "Pointer
argument cannot be accessed from Triton". There is no GPU here, so a stand-in with liger's
signature does what liger does to the modules (wrapping the real functions, so training stays
valid) and the tests check that everything is put back -- after a run that succeeds and after
one that fails -- and that work done afterwards in the same process runs unpatched code.
"""

from __future__ import annotations

import types

import pytest
import torch

import lora_finetune.training.kernels as kernels
import lora_finetune.training.run as run
from lora_finetune.errors import TrainingError
from lora_finetune.training.kernels import LigerPatch, apply_liger, attention_kernels

from helpers import tiny_config


class StandIn:
    """A fake `apply_liger_kernel_to_qwen3`: the same keyword arguments, the same kinds of patch."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"rope": 0, "norm": 0, "forward": 0}
        self.kwargs: dict | None = None

    def __call__(self, rope=True, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True, swiglu=True,
                 model=None):  # fmt: skip
        from transformers.models.qwen3 import modeling_qwen3 as mq

        self.kwargs = dict(cross_entropy=cross_entropy, fused_linear_cross_entropy=fused_linear_cross_entropy)
        calls, real_rope, real_norm = self.calls, mq.apply_rotary_pos_emb, mq.Qwen3RMSNorm

        def rope_fn(*a, **k):
            calls["rope"] += 1
            return real_rope(*a, **k)

        def norm_forward(self, x):
            calls["norm"] += 1
            return real_norm.forward(self, x)

        PatchedNorm = type("PatchedNorm", (real_norm,), {"forward": norm_forward})

        real_forward = mq.Qwen3ForCausalLM.forward

        def lce_forward(self, *a, **k):
            calls["forward"] += 1
            return real_forward(self, *a, **k)

        mq.apply_rotary_pos_emb = rope_fn  # a module function: process-wide while it lasts
        mq.Qwen3RMSNorm = PatchedNorm  # a module class: models built later use it
        mq.Qwen3ForCausalLM.forward = lce_forward  # a class method (older liger releases)
        mq.LIGER_MARK = True  # an attribute that did not exist
        if model is not None:  # the instance: its forward and its existing norm layers
            model.forward = types.MethodType(lce_forward, model)
            for m in model.modules():
                if isinstance(m, real_norm):
                    m.forward = types.MethodType(norm_forward, m)


@pytest.fixture
def stand_in(monkeypatch):
    fake = StandIn()
    monkeypatch.setattr(kernels, "liger_installed", lambda: True)
    monkeypatch.setattr(kernels, "liger_function", lambda model_type: fake if model_type == "qwen3" else None)
    return fake


def _module_state():
    from transformers.models.qwen3 import modeling_qwen3 as mq

    return dict(vars(mq)), dict(vars(mq.Qwen3ForCausalLM))


def test_patch_is_undone_to_the_attribute(stand_in, tiny_qwen3):
    from transformers import AutoModelForCausalLM
    from transformers.models.qwen3 import modeling_qwen3 as mq

    module_before, class_before = _module_state()
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    patch = apply_liger(model, "true", on_gpu=True)
    assert isinstance(patch, LigerPatch) and "applied" in patch.note
    assert stand_in.kwargs == {"cross_entropy": False, "fused_linear_cross_entropy": True}
    changed = patch.changed()
    for name in ("apply_rotary_pos_emb", "Qwen3RMSNorm", "LIGER_MARK", "Qwen3ForCausalLM.forward"):
        assert any(c.endswith(name) for c in changed), (name, changed)
    patch.undo()
    module_after, class_after = _module_state()
    assert module_after.keys() == module_before.keys() and "LIGER_MARK" not in module_after
    assert all(module_after[k] is v for k, v in module_before.items())
    assert all(class_after[k] is v for k, v in class_before.items())
    assert patch.changed() == []
    # a model built now is transformers' own
    fresh = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    assert type(fresh.model.norm) is mq.Qwen3RMSNorm and "PatchedNorm" not in repr(fresh)


def test_auto_and_false_never_patch(stand_in, tiny_qwen3):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    assert apply_liger(model, "auto", on_gpu=True) is None  # measured slower: only the memory plan asks
    assert apply_liger(model, "false", on_gpu=True) is None
    assert stand_in.kwargs is None


def _train_with_stand_in(monkeypatch, cfg, callbacks=()):
    # No CUDA here: the run is told it has a GPU for liger's sake only.
    monkeypatch.setattr(run, "apply_liger", lambda model, mode, on_gpu: apply_liger(model, mode, on_gpu=True))
    return run.train(cfg, callbacks=list(callbacks))


def test_training_uses_the_patch_and_leaves_the_process_unpatched(stand_in, monkeypatch, tiny_qwen3, tmp_path):
    from lora_finetune.use import load_for_inference, merge

    module_before, class_before = _module_state()
    res = _train_with_stand_in(monkeypatch, tiny_config(tiny_qwen3, tmp_path / "run", use_liger="true", steps=2))
    assert stand_in.calls["rope"] > 0 and stand_in.calls["norm"] > 0 and stand_in.calls["forward"] > 0
    assert any("liger-kernel" in n for n in res.resolved.notes)
    module_after, class_after = _module_state()
    assert all(module_after.get(k) is v for k, v in module_before.items()) and "LIGER_MARK" not in module_after
    assert all(class_after.get(k) is v for k, v in class_before.items())
    # later work in the same process (what the web UI, the Python API and notebooks do) is unpatched
    seen = dict(stand_in.calls)
    merged = merge(res.output_dir, tmp_path / "merged")
    im = load_for_inference(res.output_dir)
    im.model(torch.tensor([[1, 2, 3]]))
    assert stand_in.calls == seen
    assert merged.output_dir.is_dir()


def test_a_failed_run_is_unpatched_too(stand_in, monkeypatch, tiny_qwen3, tmp_path):
    from transformers import TrainerCallback

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            raise RuntimeError("boom")

    module_before, _ = _module_state()
    with pytest.raises(RuntimeError, match="boom"):
        _train_with_stand_in(monkeypatch, tiny_config(tiny_qwen3, tmp_path / "run", use_liger="true"), [Boom()])
    module_after, _ = _module_state()
    assert all(module_after.get(k) is v for k, v in module_before.items()) and "LIGER_MARK" not in module_after


def test_a_patch_that_fails_midway_is_undone(monkeypatch, tiny_qwen3):
    from transformers import AutoModelForCausalLM
    from transformers.models.qwen3 import modeling_qwen3 as mq

    def half(model=None, **kw):
        mq.Qwen3MLP = object  # patched, then liger fails
        raise ValueError("triton compile error")

    monkeypatch.setattr(kernels, "liger_installed", lambda: True)
    monkeypatch.setattr(kernels, "liger_function", lambda model_type: half)
    real_mlp = mq.Qwen3MLP
    with pytest.raises(ValueError):
        apply_liger(AutoModelForCausalLM.from_pretrained(tiny_qwen3), "true", on_gpu=True)
    assert mq.Qwen3MLP is real_mlp


def test_liger_true_without_a_gpu_is_a_clear_error(tiny_qwen3, tmp_path):
    from lora_finetune.errors import ConfigError

    with pytest.raises(ConfigError, match="use_liger: true, but there is no CUDA GPU"):
        run.train(tiny_config(tiny_qwen3, tmp_path / "run", use_liger="true"))


def test_attention_kernels_leave_out_cudnn_only_on_a_gpu_and_only_while_the_run_lasts():
    from contextlib import nullcontext

    assert isinstance(attention_kernels(cudnn=False, on_gpu=False), nullcontext)
    assert isinstance(attention_kernels(cudnn=True, on_gpu=True), nullcontext)
    if not hasattr(torch.backends.cuda, "cudnn_sdp_enabled"):
        pytest.skip("this torch has no cuDNN attention switch")
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with attention_kernels(cudnn=False, on_gpu=True):
        assert torch.backends.cuda.cudnn_sdp_enabled() is False
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() is before


def test_training_error_type_is_unchanged_by_the_scope():
    assert issubclass(TrainingError, Exception)


def test_models_are_not_kernelized_from_the_hub(tiny_qwen3):
    """transformers 5.25 kernelizes `from_pretrained` models with Hub kernels by default (network,
    foreign binaries) and re-kernelizes on every train()/eval(), which dropped instance patches.
    Ours loads with use_kernels=False: a patched layer survives train()."""
    from lora_finetune.models import load_model

    model = load_model(str(tiny_qwen3), dtype="fp32", quantization="none").model
    assert getattr(model, "use_kernels", False) is False
    norm = model.model.norm
    norm.forward = types.MethodType(lambda self, x: x, norm)
    model.train()
    model.eval()
    assert "forward" in vars(norm)


def test_overlapping_runs_in_one_process_restore_the_originals(stand_in, tiny_qwen3):
    """Two runs patched at once (threads of the Python API): the first to end leaves the patch for
    the other; the last restores what was there before either -- not the other's patched state."""
    from transformers import AutoModelForCausalLM
    from transformers.models.qwen3 import modeling_qwen3 as mq

    module_before, class_before = _module_state()
    outer = apply_liger(AutoModelForCausalLM.from_pretrained(tiny_qwen3), "true", on_gpu=True)
    patched_rope = mq.apply_rotary_pos_emb
    inner = apply_liger(AutoModelForCausalLM.from_pretrained(tiny_qwen3), "true", on_gpu=True)
    outer.undo()  # the outer run ends first: the inner one still trains patched
    assert mq.apply_rotary_pos_emb is not module_before["apply_rotary_pos_emb"]
    inner.undo()
    inner.undo()  # twice is harmless
    module_after, class_after = _module_state()
    assert mq.apply_rotary_pos_emb is module_before["apply_rotary_pos_emb"] is not patched_rope
    assert all(module_after.get(k) is v for k, v in module_before.items()) and "LIGER_MARK" not in module_after
    assert all(class_after.get(k) is v for k, v in class_before.items())
