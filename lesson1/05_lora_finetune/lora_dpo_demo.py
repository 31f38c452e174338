"""DPO after the SFT demo: teach the demo adapter to answer in complete sentences.

    make demo       # first: the SFT demo (outputs/demo)
    make demo-dpo   # then this: DPO on 30 Chinese preference pairs (outputs/demo-dpo)

Each pair answers a question twice: in a complete sentence (chosen) and with the bare answer
(rejected), the terse style the SFT demo learned. DPO starts from the SFT adapter, which is also
its reference model (`init_adapter`), and the run holds 20% of the pairs out. Printed: the
held-out preference accuracy -- the share of held-out pairs whose chosen answer the model gives
the higher mean log-probability -- before and after DPO, TRL's reward accuracy and margin on the
held-out pairs, and the held-out questions answered before and after.

`python lesson1/05_lora_finetune/lora_dpo_demo.py [--field value ...]` takes the same settings as
`lora-finetune train` (defaults below).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))  # run from a bare checkout too

from lora_finetune.config import load_config, parse_overrides
from lora_finetune.errors import LoraFinetuneError

DEFAULTS = {
    "model_name": "smollm2-135m-instruct",
    "method": "dpo",
    "init_adapter": "outputs/demo",
    "output_dir": "outputs/demo-dpo",
    "steps": 20,
    "learning_rate": 1e-4,
    "beta": 0.1,
    "eval_fraction": 0.2,
    "eval_steps": 10,
    "save_steps": 10,
    "logging_steps": 5,
}


def held_out_pairs(config):
    """The pairs the run holds out (the same split training makes)."""
    from lora_finetune.data import demo_rows
    from lora_finetune.data.formats import records_from_rows
    from lora_finetune.training import split_records

    records = records_from_rows(demo_rows("preference"), kinds=("preference",))
    return split_records(records, config.eval_fraction, config.seed)[1]


def measure(adapter: Path, pairs: list) -> tuple[float, list[str]]:
    from lora_finetune.use import generate, load_for_inference, preference_accuracy

    im = load_for_inference(adapter)
    questions = [{"messages": [{"role": "user", "content": p["messages"][-1]["content"]}]} for p in pairs]
    answers = [o["text"].strip() for o in generate(im, questions, max_new_tokens=32)]
    return preference_accuracy(im, pairs), answers


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[lora-finetune] %(message)s")
    from lora_finetune.cli import quiet_library_logs
    from lora_finetune.training import train

    quiet_library_logs()  # bitsandbytes' and kernels' notes about themselves are not about the run

    argv = sys.argv[1:] if argv is None else argv
    config = load_config(None, {**DEFAULTS, **parse_overrides(argv)})
    if not (Path(config.init_adapter) / "adapter_config.json").is_file():
        raise SystemExit(f"{config.init_adapter} holds no adapter: run `make demo` first (the SFT demo).")
    pairs = held_out_pairs(config)
    before, before_answers = measure(Path(config.init_adapter), pairs)
    result = train(config)
    after, after_answers = measure(result.output_dir, pairs)
    held = result.metrics["preference"]["eval"]
    print(f"\n留出的 {len(pairs)} 对偏好数据 / {len(pairs)} held-out pairs:")
    print(f"  偏好准确率 preference accuracy: DPO 前 before {before:.0%} -> DPO 后 after {after:.0%}")
    print(f"  TRL reward accuracy {held['accuracies']:.0%}, margin {held['margins']:.2f}")
    for pair, b, a in zip(pairs, before_answers, after_answers):
        print(f"\n问：{pair['messages'][-1]['content']}")
        print(f"  DPO 前 before: {b}")
        print(f"  DPO 后 after:  {a}")
    print(f"\n输出目录 / outputs: {result.output_dir.resolve()}")
    print(f"对话 / chat: lora-finetune chat --adapter {result.output_dir}")


if __name__ == "__main__":
    try:
        main()
    except LoraFinetuneError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
