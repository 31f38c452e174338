"""面向 ChatGLM-6B 类模型的 LoRA 微调示例 / LoRA fine-tuning demo for ChatGLM-6B-class models.

The teaching script from the seed document, kept short and readable, now standing on the
`lora_finetune` package so every step is done right:

    build_dummy_dataset()  20 instruction/input/output samples
    format_sample()        问：{instruction}\\n补充信息：{input}\\n答：{output}
    tokenize()             prompt tokens masked (-100), answer + EOS learned, no padding here
    main()                 load the model, inject LoRA, train with Trainer, save the adapter,
                           then answer two training questions before and after fine-tuning

Run it (any LoRAFinetuneConfig field can be overridden with --field value):

    python lesson1/05_lora_finetune/lora_chatglm_demo.py --model_name smollm2-135m-instruct

What differs from the seed document, and why (see README "Differences from the seed"):
- `target_modules` is chosen per model type (`auto`): the seed's ChatGLM names do not exist in
  Qwen3 or Llama models, so its default setup could not train.
- EOS is appended to every answer and labels are masked by position, so the model learns to
  stop even with pad_token == eos_token.
- Samples are not padded to 768: each batch is padded to its own longest sample.
- 4-bit loading goes through BitsAndBytesConfig (`--quantization 4bit`), and falls back to full
  precision with a warning where there is no CUDA GPU or bitsandbytes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# Run from a source checkout without installing: make `src/` importable.
_SRC = Path(__file__).resolve().parents[2] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from lora_finetune.config import LoRAFinetuneConfig, load_config, parse_overrides  # noqa: E402
from lora_finetune.data import build_dummy_dataset  # noqa: E402,F401  (the seed's API)
from lora_finetune.errors import LoraFinetuneError  # noqa: E402
from lora_finetune.templates import format_sample, tokenize  # noqa: E402,F401

# The two questions the demo asks before and after fine-tuning (both are training samples).
DEMO_QUESTIONS = [("中国的首都是哪里？", ""), ("判断这句话的情感。", "今天天气真好，我很开心。")]


def ask(adapter_dir: Path, base_only: bool) -> list[str]:
    from lora_finetune.use import answer, load_for_inference

    model = load_for_inference(adapter_dir, base_only=base_only)
    return [answer(model, q, x, max_new_tokens=48) for q, x in DEMO_QUESTIONS]


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[lora-finetune] %(message)s")
    from lora_finetune.cli import quiet_library_logs

    quiet_library_logs()  # bitsandbytes' and kernels' notes about themselves are not about the run
    from lora_finetune.training import train

    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        from lora_finetune.config import describe_fields

        print(__doc__)
        print("Settings (--field value):\n" + describe_fields())
        return
    config: LoRAFinetuneConfig = load_config(None, parse_overrides(argv))

    result = train(config)  # data -> tokenize -> model (+4-bit) -> LoRA -> Trainer -> save
    m = result.metrics
    print(
        f"\n训练完成 / trained {m['steps']} steps in {m['train_runtime_s']:.0f}s: "
        f"train loss {m['final_train_loss']:.4f}, {m['trainable_params']:,} trainable params"
    )

    before = ask(result.output_dir, base_only=True)
    after = ask(result.output_dir, base_only=False)
    for (q, x), b, a in zip(DEMO_QUESTIONS, before, after):
        print(f"\n问：{q}" + (f"\n补充信息：{x}" if x else ""))
        print(f"  微调前 before: {b}")
        print(f"  微调后 after:  {a}")
    print(f"\n输出目录 / outputs: {result.output_dir.resolve()}")
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "run_config.yaml",
        "metrics.json",
        "loss_curve.png",
    ):
        print(f"  {name}")
    print(f"对话 / chat: lora-finetune chat --adapter {result.output_dir}")


if __name__ == "__main__":
    try:
        main()
    except LoraFinetuneError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
