"""DeepSpeed ZeRO-2 and ZeRO-3 through the shipped configs (configs/accelerate_deepspeed_zero*.yaml
and their JSON files), run for real: on this CPU through DeepSpeed's CPU accelerator (gloo), two
processes, `accelerate launch` as users type it.

- the JSON files' `auto` values are filled by the trainer from our config, and DeepSpeed accepts
  the result (its own engine parses it: a wrong batch size stops it);
- two processes with batch 1 follow the curve of one process with batch 2 and save the same
  adapter; under ZeRO-3 the weights are sharded, so that adapter comes from the gather every
  rank joins, written once by rank 0; it loads back and answers.

DeepSpeed lives in build/deepspeed-site (`make deepspeed`, which `make test` runs), put on the
PYTHONPATH of the launched processes only. (~1 min on 2 cores: its shared-memory collective is
compiled on first use, then cached in ~/.cache/torch_extensions.)
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest
import yaml
from launching import (
    DEEPSPEED_SITE,
    KILL_RANK_1,
    accelerate_launch,
    assert_same_adapter,
    assert_same_curve,
    launch_env,
    train_one_process,
    train_target,
    write_run_config,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (DEEPSPEED_SITE / "deepspeed").is_dir(),
        reason="DeepSpeed is not in build/deepspeed-site: run `make deepspeed` (make test does)",
    ),
]

# What the trainer hands DeepSpeed, written by rank 0 once training has begun.
PROBE = textwrap.dedent("""
    import json, sys
    from transformers import TrainerCallback
    from lora_finetune.cli import _setup_logging
    from lora_finetune.config import load_config
    from lora_finetune.training import train

    class DumpDeepSpeedConfig(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            from accelerate.state import AcceleratorState
            if state.is_world_process_zero:
                with open(sys.argv[3], "w") as f:
                    json.dump(AcceleratorState().deepspeed_plugin.deepspeed_config, f)

    _setup_logging()
    train(load_config(sys.argv[1], {"output_dir": sys.argv[2]}), callbacks=[DumpDeepSpeedConfig()])
""")


def _env():
    return launch_env(
        PYTHONPATH=os.pathsep.join([str(DEEPSPEED_SITE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PATH=os.pathsep.join([str(DEEPSPEED_SITE / "bin"), os.environ["PATH"]]),
    )


@pytest.fixture(scope="module")
def one_process(tiny_qwen3, tmp_path_factory):
    """The same run in one process with the same global batch (2)."""
    out = tmp_path_factory.mktemp("single") / "out"
    return train_one_process(tiny_qwen3, out, batch_size=2)


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    else:
        yield value


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_two_processes_match_one_process(tiny_qwen3, tmp_path, one_process, stage):
    run_yaml = write_run_config(tmp_path, tiny_qwen3, gradient_accumulation_steps=1, max_grad_norm=3.0)
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    out, dumped = tmp_path / "out", tmp_path / "deepspeed_config.json"
    proc = accelerate_launch(
        f"accelerate_deepspeed_zero{stage}.yaml", 2, [str(probe), str(run_yaml), str(out), str(dumped)], _env()
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    # DeepSpeed got our settings in place of every "auto" of the shipped file.
    ds = json.loads(dumped.read_text())
    assert "auto" not in [v for v in _leaves(ds) if isinstance(v, str)], ds
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_micro_batch_size_per_gpu"] == 1
    assert ds["gradient_accumulation_steps"] == 1
    assert ds["train_batch_size"] == 2  # micro batch x accumulation x 2 processes
    assert ds["gradient_clipping"] == 3.0
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False  # fp32 on a CPU

    # One finished folder, written once, nothing left behind; the run record names the engine.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deepspeed_config.json", "out", "probe.py", "run.yaml"]
    record = yaml.safe_load((out / "run_config.yaml").read_text())
    assert f"engine: DeepSpeed ZeRO-{stage}, 2 processes" in record["resolved"]["notes"]
    # (max_grad_norm differs from the one-process run (1.0): no gradient here reaches either.)
    assert_same_curve(out, one_process)
    assert_same_adapter(out, one_process)


def test_zero3_adapter_saved_from_the_gather_loads_and_answers(tiny_qwen3, tmp_path, one_process):
    """The real command line; the adapter (gathered from the shards) chats like any other."""
    run_yaml = write_run_config(tmp_path, tiny_qwen3)
    out = tmp_path / "out"
    proc = accelerate_launch("accelerate_deepspeed_zero3.yaml", 2, train_target(run_yaml, out), _env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    # rank 0 alone reports, once; the ranks' shared library noise stays out
    assert proc.stderr.count("[lora-finetune] step 4/4") == 1, proc.stderr[-3000:]
    assert "is deprecated" not in proc.stderr
    assert proc.stdout.count("Done (metrics.json)") == 1
    assert_same_adapter(out, one_process)

    from lora_finetune.use import answer, load_for_inference

    im = load_for_inference(out)
    reference = load_for_inference(one_process)
    question = "中国的首都是哪里？"
    assert answer(im, question, max_new_tokens=6) == answer(reference, question, max_new_tokens=6)


def test_zero2_with_a_4bit_base(tiny_qwen3, tmp_path):
    """QLoRA under ZeRO-2 (which shards optimizer state and gradients, not weights): the 4-bit
    base loads in every process and the curve is one process's with the same global batch."""
    run_yaml = write_run_config(tmp_path, tiny_qwen3, quantization="4bit")
    out = tmp_path / "out"
    proc = accelerate_launch("accelerate_deepspeed_zero2.yaml", 2, train_target(run_yaml, out), _env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert yaml.safe_load((out / "run_config.yaml").read_text())["resolved"]["quantization"] == "4bit"
    assert_same_curve(out, train_one_process(tiny_qwen3, tmp_path / "one", quantization="4bit", batch_size=2))


def test_zero3_killed_rank_resumes_to_one_process_adapter(tiny_qwen3, tmp_path):
    """SIGKILL on rank 1 after the step-4 checkpoint (DeepSpeed's sharded states and our COMPLETE
    marker written); rank 0 says how to resume; `--resume` on both ends as one process would."""
    run_yaml = write_run_config(tmp_path, tiny_qwen3, steps=8)
    out, go = tmp_path / "out", tmp_path / "go"
    go.touch()  # no pause
    killer = tmp_path / "killer.py"
    killer.write_text(KILL_RANK_1)
    proc = accelerate_launch(
        "accelerate_deepspeed_zero3.yaml", 2, [str(killer), str(run_yaml), str(out), str(go)], _env()
    )
    assert proc.returncode != 0 and "Another process of this run stopped at step 4" in proc.stderr, proc.stderr[-3000:]
    assert not out.exists()

    proc = accelerate_launch("accelerate_deepspeed_zero3.yaml", 2, train_target(run_yaml, out, "--resume"), _env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resuming from" in proc.stderr and "checkpoint-4" in proc.stderr
    assert_same_adapter(out, train_one_process(tiny_qwen3, tmp_path / "one", steps=8, batch_size=2))
