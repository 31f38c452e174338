"""The seed's lesson script: its documented API exists and main() runs end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "lesson1" / "05_lora_finetune" / "lora_chatglm_demo.py"


def _load():
    spec = importlib.util.spec_from_file_location("lora_chatglm_demo", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_documented_functions_exist():
    mod = _load()
    for name in ("LoRAFinetuneConfig", "build_dummy_dataset", "format_sample", "tokenize", "main"):
        assert callable(getattr(mod, name)), name
    assert len(mod.build_dummy_dataset()) == 20
    assert mod.format_sample({"instruction": "a", "input": "b", "output": "c"}) == "问：a\n补充信息：b\n答：c"
    assert mod.LoRAFinetuneConfig().model_name == "Qwen/Qwen3-0.6B"


def test_main_trains_and_compares(tiny_qwen3, tmp_path, capsys):
    mod = _load()
    out = tmp_path / "lesson"
    mod.main(
        [
            "--model_name",
            str(tiny_qwen3),
            "--output_dir",
            str(out),
            "--steps",
            "2",
            "--eval_steps",
            "1",
            "--save_steps",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert "微调前 before" in printed and "微调后 after" in printed and str(out) in printed
    assert (out / "adapter_model.safetensors").is_file()


def test_help_lists_the_settings(capsys):
    _load().main(["--help"])
    out = capsys.readouterr().out
    assert "--model_name" in out and "--learning_rate" in out
