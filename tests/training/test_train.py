"""Training on tiny models: what changes, what is saved, and that it reloads exactly."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import TrainerCallback

from lora_finetune.errors import ConfigError, DataError, ModelError
from lora_finetune.training.run import train

from helpers import tiny_config


class Snapshot(TrainerCallback):
    """Record parameters before and after training, and logits of the final in-memory model."""

    def __init__(self, probe: torch.Tensor):
        self.probe = probe

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kw):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        model.eval()
        with torch.no_grad():
            self.logits = model(input_ids=self.probe).logits.clone()


PROBE = torch.tensor([[5, 17, 42, 99, 3, 8]])


@pytest.mark.parametrize("kind", ["qwen3", "llama", "gpt2"])
def test_only_lora_weights_change_and_adapter_reloads(tiny_models, tmp_path, kind):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    snap = Snapshot(PROBE)
    res = train(tiny_config(tiny_models[kind], tmp_path / "run"), callbacks=[snap])
    changed = {n for n in snap.before if not torch.equal(snap.before[n], snap.after[n])}
    assert changed, "training changed nothing"
    assert all("lora_" in n for n in changed), changed - {n for n in changed if "lora_" in n}
    assert snap.trainable == {n for n in snap.before if "lora_" in n}

    base = AutoModelForCausalLM.from_pretrained(tiny_models[kind])
    reloaded = PeftModel.from_pretrained(base, res.output_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=PROBE).logits, snap.logits, rtol=1e-5, atol=1e-5)


def test_output_folder_contents(tiny_qwen3, tmp_path):
    res = train(tiny_config(tiny_qwen3, tmp_path / "run", steps=4, eval_steps=2))
    out = res.output_dir
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer_config.json",
        "run_config.yaml",
        "metrics.json",
        "loss_curve.png",
        "manifest.json",
    ):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()
    run = yaml.safe_load((out / "run_config.yaml").read_text())
    assert run["model_name"] == str(tiny_qwen3) and run["r"] == 4
    r = run["resolved"]
    assert r["template"] == "chat" and r["quantization"] == "none"
    assert r["target_modules"][0] == "q_proj" and "torch" in r["versions"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 4 and m["eval_loss"] > 0 and m["eval_perplexity"] > 1
    assert m["real_tokens_per_second"] > 0 and m["samples"] == {"train": 18, "eval": 2, "dropped_too_long": 0}
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    # no hidden work folder left behind
    assert [p.name for p in out.parent.iterdir()] == ["run"]


def test_a_plot_that_cannot_be_drawn_does_not_cost_the_adapter(tiny_qwen3, tmp_path, monkeypatch, caplog):
    """matplotlib 3.7 under numpy 2 fails to import: the run still finishes, without the picture."""
    import lora_finetune.training.run as run_module

    def broken(*a, **k):
        raise ImportError("numpy.core.multiarray failed to import")

    monkeypatch.setattr(run_module, "plot_losses", broken)
    res = train(tiny_config(tiny_qwen3, tmp_path / "run", steps=2))
    assert (res.output_dir / "adapter_model.safetensors").is_file() and (res.output_dir / "manifest.json").is_file()
    assert not (res.output_dir / "loss_curve.png").exists()
    assert "loss_curve.png not drawn (ImportError: numpy.core.multiarray" in caplog.text


def test_refuses_to_overwrite_then_overwrites(tiny_qwen3, tmp_path):
    train(tiny_config(tiny_qwen3, tmp_path / "run", steps=2))
    with pytest.raises(ConfigError, match="--overwrite"):
        train(tiny_config(tiny_qwen3, tmp_path / "run", steps=2))
    res = train(tiny_config(tiny_qwen3, tmp_path / "run", steps=3, overwrite=True))
    assert res.metrics["steps"] == 3


def test_bad_target_fails_before_data_is_read(tiny_qwen3, tmp_path):
    cfg = tiny_config(
        tiny_qwen3,
        tmp_path / "run",
        target_modules=["query_key_value"],
        data_path=str(tmp_path / "does-not-exist.jsonl"),
    )
    with pytest.raises(ModelError, match="q_proj"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_every_sample_too_long(tiny_qwen3, tmp_path):
    with pytest.raises(DataError, match="every training sample is longer than max_length=8"):
        train(tiny_config(tiny_qwen3, tmp_path / "run", max_length=8))
    assert not (tmp_path / "run").exists()


def test_reference_backend_trains_and_saves_peft_format(tiny_qwen3, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    snap = Snapshot(PROBE)
    res = train(tiny_config(tiny_qwen3, tmp_path / "run", lora_backend="reference"), callbacks=[snap])
    assert all("lora_" in n for n in snap.trainable)
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    reloaded = PeftModel.from_pretrained(base, res.output_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=PROBE).logits, snap.logits, rtol=1e-5, atol=1e-5)


def test_jsonl_data_and_seed_template(tiny_qwen3, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "\n".join(json.dumps({"instruction": f"问题{i}", "output": f"答案{i}"}, ensure_ascii=False) for i in range(6)),
        "utf-8",
    )
    res = train(tiny_config(tiny_qwen3, tmp_path / "run", data_path=str(data), template="seed"))
    # `seed` is the old name of `qa`: accepted, and recorded under the new name
    assert res.resolved.template == "qa" and len(res.resolved.data_sha256) == 64
    assert res.metrics["samples"]["train"] == 5


def test_epochs_instead_of_steps(tiny_qwen3, tmp_path):
    """20 demo samples, 2 held out, batch 2: 9 steps per epoch."""
    res = train(tiny_config(tiny_qwen3, tmp_path / "run", steps=None, epochs=2, save_steps=100, eval_steps=100))
    assert res.metrics["steps"] == 18
    record = yaml.safe_load((res.output_dir / "run_config.yaml").read_text())
    assert record["epochs"] == 2.0 and record["steps"] is None
