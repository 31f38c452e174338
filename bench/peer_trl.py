"""TRL's side of bench_peers.py, run by the TRL venv's python (build/peers/trl):

    build/peers/trl/bin/python bench/peer_trl.py '{"model": ..., "train": ..., "out": ..., ...}'

SFTTrainer as its documentation shows it, with the job's shared settings (batch 4, one epoch,
max length 1024, lr 1e-4 linear, LoRA r8/alpha 16/dropout 0.05 on all linear layers, seed 42)
and TRL's own defaults for the rest -- among them `bf16=True` and `gradient_checkpointing=True`
(SFTConfig's documented defaults), unless the arguments override them -- plus `use_cpu=True`,
without which bf16=True refuses to start on a machine without a GPU. Records are given as
prompt/completion conversations, so TRL computes the loss on the answer only, as we do. Writes
the adapter to OUT/adapter and OUT/trl_result.json (train metrics, log history, settings).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    args = json.loads(sys.argv[1])
    t0 = time.perf_counter()
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    rows = json.loads(Path(args["train"]).read_text(encoding="utf-8"))

    def conversation(r: dict) -> dict:
        user = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
        return {
            "prompt": [{"role": "system", "content": args["system"]}, {"role": "user", "content": user}],
            "completion": [{"role": "assistant", "content": r["output"]}],
        }

    data = Dataset.from_list([conversation(r) for r in rows])
    out = Path(args["out"])
    settings = {
        "output_dir": str(out / "work"),
        "per_device_train_batch_size": 4,
        "num_train_epochs": 1,
        "max_length": 1024,
        "learning_rate": 1e-4,
        "lr_scheduler_type": "linear",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 42,
        # Without it TRL's default bf16=True stops at once on a machine without a GPU ("Your setup
        # doesn't support bf16/gpu. You need to assign use_cpu"): what a CPU user must add.
        "use_cpu": True,
        **args.get("overrides", {}),
    }
    cfg = SFTConfig(**settings)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=args["model"], args=cfg, train_dataset=data, peft_config=lora)
    t_train = time.perf_counter()
    result = trainer.train()
    t_end = time.perf_counter()
    trainer.save_model(str(out / "adapter"))
    report = {
        "train_runtime": result.metrics.get("train_runtime"),
        "train_loop_s": t_end - t_train,
        "setup_s": t_train - t0,
        "metrics": result.metrics,
        "log_history": trainer.state.log_history,
        "settings": {
            **settings,
            "bf16": cfg.bf16,
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "padding_free": cfg.padding_free,
        },
    }
    (out / "trl_result.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
