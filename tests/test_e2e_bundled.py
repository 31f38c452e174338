"""End to end on the bundled SmolLM2-135M-Instruct (real weights, CPU, about 2 minutes).

After training on the 20 demo samples, greedy answers to training prompts stop with EOS well
before max_new_tokens and reproduce the trained answers for most of them. The base model, asked
the same, runs on to max_new_tokens on most prompts: that contrast is what the labels fix.
"""

from __future__ import annotations

import pytest

from lora_finetune.config import build_config
from lora_finetune.data.demo import dummy_rows
from lora_finetune.data.formats import records_from_rows
from lora_finetune.training.dataset import split_records
from lora_finetune.training.run import train
from lora_finetune.use.inference import generate, load_for_inference

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "demo"
    cfg = build_config(
        dict(
            model_name="smollm2-135m-instruct",
            output_dir=str(out),
            steps=60,
            learning_rate=1e-3,
            eval_steps=30,
            save_steps=30,
            logging_steps=10,
        )
    )
    return train(cfg)


def test_trained_model_stops_and_answers(demo_run):
    train_rows, _ = split_records(dummy_rows(), 0.1, 42)
    prompts = records_from_rows(
        [{"instruction": r["instruction"], "input": r["input"]} for r in train_rows], require_answer=False
    )
    model = load_for_inference(demo_run.output_dir)
    outs = generate(model, prompts, max_new_tokens=40, batch_size=9)
    stopped = sum(o["stopped"] and o["tokens"] < 40 for o in outs)
    exact = sum(o["text"] == r["output"] for o, r in zip(outs, train_rows))
    assert stopped == len(outs), [o for o in outs if not o["stopped"]]
    assert exact >= 0.8 * len(outs), [(o["text"], r["output"]) for o, r in zip(outs, train_rows)]
    assert demo_run.metrics["final_train_loss"] < 0.1


def test_the_adapter_names_the_bundled_model_by_its_hub_id(demo_run):
    """peft, vLLM or another machine can find the base from adapter_config.json alone."""
    import json

    config = json.loads((demo_run.output_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "lora-finetune" in demo_run.resolved.base_model  # the record keeps the cache folder
