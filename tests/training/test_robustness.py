"""Never lose a run: resume after SIGKILL, interrupts, NaN, OOM, determinism, safe loading."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from lora_finetune.errors import ConfigError, TrainingError
from lora_finetune.training.callbacks import COMPLETE, last_complete_checkpoint
from lora_finetune.training.run import train

from helpers import tiny_config

SRC = Path(__file__).resolve().parents[2] / "src"
TESTS = Path(__file__).resolve().parents[1]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def _cfg(model, out, **kw):
    # dropout > 0 so that resuming must restore the RNG state too
    base = dict(steps=8, save_steps=2, eval_steps=4, dropout=0.1)
    base.update(kw)
    return tiny_config(model, out, **base)


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [{src!r}, {tests!r}]
    from transformers import TrainerCallback
    from helpers import tiny_config
    from lora_finetune.training.run import train

    class Kill(TrainerCallback):
        # SIGKILL after a step ends; SIGINT while a step runs (as a Ctrl-C would arrive)
        def on_step_{hook}(self, args, state, control, **kw):
            if state.global_step == {kill_at}:
                os.kill(os.getpid(), signal.{sig})

    cfg = tiny_config({model!r}, {out!r}, steps=8, save_steps=2, eval_steps=4, dropout=0.1)
    train(cfg, callbacks=[Kill()])
""")


def _run_and_kill(model: Path, out: Path, kill_at: int, sig: str = "SIGKILL"):
    hook = "end" if sig == "SIGKILL" else "begin"
    at = kill_at if sig == "SIGKILL" else kill_at - 1
    code = KILLER.format(src=str(SRC), tests=str(TESTS), kill_at=at, model=str(model), out=str(out), sig=sig, hook=hook)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.slow  # a training subprocess, killed and resumed
def test_sigkill_then_resume_gives_the_same_adapter(tiny_qwen3, tmp_path):
    ref = train(_cfg(tiny_qwen3, tmp_path / "ref"))
    out = tmp_path / "run"
    proc = _run_and_kill(tiny_qwen3, out, kill_at=5)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists()  # nothing half-written in output_dir
    ckpt = last_complete_checkpoint(tmp_path / ".run.partial" / "checkpoints")
    assert ckpt is not None and ckpt.name == "checkpoint-4"
    with pytest.raises(ConfigError, match="--resume"):  # a plain rerun refuses to lose it
        train(_cfg(tiny_qwen3, out))
    resumed = train(_cfg(tiny_qwen3, out, resume="auto"))
    assert resumed.metrics["steps"] == 8
    a, b = _weights(ref.output_dir), _weights(resumed.output_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_incomplete_checkpoint_is_ignored(tmp_path):
    ck = tmp_path / "checkpoints"
    (ck / "checkpoint-2").mkdir(parents=True)
    (ck / "checkpoint-2" / COMPLETE).write_text("ok")
    (ck / "checkpoint-4").mkdir()  # killed while writing
    assert last_complete_checkpoint(ck).name == "checkpoint-2"


@pytest.mark.slow  # a training subprocess, killed and resumed
def test_sigint_saves_a_checkpoint_and_resumes(tiny_qwen3, tmp_path):
    out = tmp_path / "run"
    proc = _run_and_kill(tiny_qwen3, out, kill_at=3, sig="SIGINT")
    assert proc.returncode != 0
    assert "interrupted at step 3" in proc.stderr and "--resume" in proc.stderr
    ckpt = last_complete_checkpoint(tmp_path / ".run.partial" / "checkpoints")
    assert ckpt is not None and ckpt.name == "checkpoint-3"  # saved on the way out
    assert train(_cfg(tiny_qwen3, out, resume="auto")).metrics["steps"] == 8


class Poison(TrainerCallback):
    """Make the LoRA weights NaN after step 3, as an fp16 overflow would."""

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step == 3:
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.data.fill_(float("nan"))


def test_nan_stops_with_advice_and_keeps_last_good_checkpoint(tiny_qwen3, tmp_path):
    with pytest.raises(TrainingError) as e:
        train(_cfg(tiny_qwen3, tmp_path / "run"), callbacks=[Poison()])
    msg = str(e.value)
    assert "bf16" in msg and "learning_rate" in msg and "checkpoint-2" in msg
    ckpt = tmp_path / ".run.partial" / "checkpoints"
    assert last_complete_checkpoint(ckpt).name == "checkpoint-2"
    assert not (ckpt / "checkpoint-4").exists()
    assert not (tmp_path / "run").exists()
    w = load_file(str(ckpt / "checkpoint-2" / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in w.values())


class OOM(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_is_answered_with_settings(tiny_qwen3, tmp_path):
    with pytest.raises(TrainingError) as e:
        train(_cfg(tiny_qwen3, tmp_path / "run"), callbacks=[OOM()])
    msg = str(e.value)
    for hint in ("batch_size", "max_length", "gradient_checkpointing", "4bit", "estimate"):
        assert hint in msg


def test_same_seed_same_adapter(tiny_qwen3, tmp_path):
    a = train(_cfg(tiny_qwen3, tmp_path / "a", steps=4))
    b = train(_cfg(tiny_qwen3, tmp_path / "b", steps=4))
    wa, wb = _weights(a.output_dir), _weights(b.output_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(_cfg(tiny_qwen3, tmp_path / "c", steps=4, seed=7))
    wc = _weights(c.output_dir)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_pickled_bin_weights_cannot_run_code(tiny_qwen3, tmp_path):
    """A model folder whose .bin pickle would run code is refused, and the code never runs."""
    import shutil

    from lora_finetune.models.loading import load_model

    folder = tmp_path / "evil"
    shutil.copytree(tiny_qwen3, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model.embed_tokens.weight": Evil()}, folder / "pytorch_model.bin")
    from lora_finetune.errors import ModelError

    with pytest.raises(ModelError, match="Refused to load the pickled .bin"):
        load_model(str(folder))
    assert not marker.exists()


def test_remote_code_is_off_by_default_with_a_clear_message(tmp_path):
    import json

    from lora_finetune.errors import ModelError
    from lora_finetune.models.loading import read_model_config

    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "my_custom_arch", "auto_map": {"AutoConfig": "configuration_x.XConfig"}})
    )
    (folder / "configuration_x.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ModelError) as e:
        read_model_config(str(folder))
    assert "trust_remote_code" in str(e.value) and "trust" in str(e.value)


def test_truncated_adapter_folder_names_the_file(tiny_qwen3, tmp_path):
    from lora_finetune.errors import LoraFinetuneError
    from lora_finetune.use.inference import load_for_inference

    res = train(_cfg(tiny_qwen3, tmp_path / "run", steps=2))
    tokenizer = res.output_dir / "tokenizer.json"
    saved = tokenizer.read_bytes()
    tokenizer.unlink()  # a file that never arrived
    with pytest.raises(LoraFinetuneError, match="incomplete: tokenizer.json is missing"):
        load_for_inference(res.output_dir)
    tokenizer.write_bytes(saved)
    weights = res.output_dir / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a half-copied file
    with pytest.raises(LoraFinetuneError, match="adapter_model.safetensors has 100 bytes"):
        load_for_inference(res.output_dir)


def test_explicit_resume_without_checkpoint_is_an_error(capsys, tmp_path):
    from lora_finetune.cli import main

    assert main(["train", "--resume", "--output_dir", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "no interrupted run" in err
    assert not (tmp_path / "nothing").exists()


def test_reference_backend_refuses_conv1d_before_reading_data(tiny_models, tmp_path):
    from lora_finetune.errors import ModelError

    cfg = tiny_config(
        tiny_models["gpt2"], tmp_path / "run", lora_backend="reference", data_path=str(tmp_path / "missing.jsonl")
    )
    with pytest.raises(ModelError, match="Conv1D"):
        train(cfg)


class _Args:
    def __init__(self, fp16):
        self.fp16 = fp16


class _Control:
    should_save = should_evaluate = should_training_stop = False


class _State:
    global_step = 3


def test_fp16_overflow_is_not_mistaken_for_nan():
    from lora_finetune.training.callbacks import HealthCallback

    for fp16, stops in ((True, False), (False, True)):
        h, c = HealthCallback(), _Control()
        h.on_log(_Args(fp16), _State(), c, logs={"loss": 1.2, "grad_norm": float("inf")})
        assert c.should_training_stop is stops
    h, c = HealthCallback(), _Control()
    h.on_log(_Args(True), _State(), c, logs={"loss": float("nan")})
    assert c.should_training_stop and not c.should_save


def test_interrupt_never_checkpoints_a_broken_step():
    from lora_finetune.training.callbacks import HealthCallback, InterruptCallback

    h = HealthCallback()
    i = InterruptCallback(h)
    i.signal = signal.SIGINT
    c = _Control()
    h._stop(c, "nan")
    i.on_step_end(_Args(False), _State(), c)
    assert c.should_training_stop and not c.should_save


class _StepState:
    def __init__(self, step, max_steps=100):
        self.global_step, self.max_steps = step, max_steps


class _Flow:
    def __init__(self, **flags):
        self.should_log = self.should_evaluate = self.should_save = self.should_training_stop = False
        for k, v in flags.items():
            setattr(self, k, v)


def _health_on(params):
    from lora_finetune.training.callbacks import HealthCallback

    model = torch.nn.Module()
    for i, p in enumerate(params):
        model.register_parameter(f"lora_{i}", torch.nn.Parameter(p))
    h = HealthCallback()
    h.on_train_begin(None, None, None, model=model)
    return h, model


def test_health_check_reads_the_weights_only_where_the_state_is_used():
    """No host sync on a plain step: the non-finite flag stays on the device until a step that
    logs, evaluates, saves or ends -- and that step is stopped, with no checkpoint, naming the
    tensor."""
    h, model = _health_on([torch.ones(4, 4), torch.ones(8)])
    c = _Flow()
    h.on_step_end(None, _StepState(1), c)
    assert not c.should_training_stop and h.problem is None
    model.lora_1.data[3] = float("inf")
    quiet = _Flow()
    h.on_step_end(None, _StepState(2), quiet)  # no log/eval/save here: nothing is read yet
    assert not quiet.should_training_stop and h.problem is None and h._bad is not None
    model.lora_1.data[3] = 1.0  # even if it recovered, what happened since the last check counts
    saving = _Flow(should_save=True)
    h.on_step_end(None, _StepState(3), saving)
    assert h.problem is None  # the weights are finite again: the flag is confirmed tensor by tensor
    model.lora_0.data[0, 0] = float("nan")
    saving = _Flow(should_save=True)
    h.on_step_end(None, _StepState(4), saving)
    assert saving.should_training_stop and not saving.should_save
    assert h.problem == "non-finite values in lora_0 by step 4"
    # the last step is always checked, and so is the end of training
    h2, m2 = _health_on([torch.ones(3)])
    m2.lora_0.data[0] = float("nan")
    last = _Flow()
    h2.on_step_end(None, _StepState(5, max_steps=5), last)
    assert last.should_training_stop and "lora_0" in h2.problem
    h3, m3 = _health_on([torch.ones(3)])
    h3.on_step_end(None, _StepState(1), _Flow())
    m3.lora_0.data[0] = float("nan")
    h3.on_step_end(None, _StepState(2), _Flow())
    h3.on_train_end(None, _StepState(2), _Flow())
    assert h3.problem is not None


def test_health_check_is_not_fooled_by_a_norm_that_overflows():
    """fp16 weights whose norm overflows fp16 (300 x sqrt(100000) > 65504) but whose values are
    finite: the flag is raised, the tensor-by-tensor check clears it, training goes on."""
    h, model = _health_on([torch.full((100_000,), 300.0, dtype=torch.float16)])
    c = _Flow(should_log=True)
    h.on_step_end(None, _StepState(1), c)
    assert h.problem is None and not c.should_training_stop


def test_interrupt_checks_health_before_saving():
    from lora_finetune.training.callbacks import InterruptCallback

    h, model = _health_on([torch.ones(2)])
    i = InterruptCallback(h)
    i.signal = signal.SIGINT
    model.lora_0.data[1] = float("nan")
    c = _Flow()
    h.on_step_end(None, _StepState(7), c)  # a plain step: not read yet
    assert h.problem is None
    i.on_step_end(None, _StepState(7), c)
    assert c.should_training_stop and not c.should_save and "lora_0" in h.problem


def test_chatglm_v1_code_that_breaks_gets_the_version_advice(tmp_path):
    import json

    from lora_finetune.errors import ModelError
    from lora_finetune.models.loading import read_model_config

    folder = tmp_path / "chatglm-6b"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "chatglm",
                "position_encoding_2d": True,
                "inner_hidden_size": 16384,
                "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig"},
            }
        )
    )
    (folder / "configuration_chatglm.py").write_text("from transformers.old_module_gone import Something\n")
    with pytest.raises(ModelError) as e:
        read_model_config(str(folder), trust_remote_code=True)
    assert "4.23" in str(e.value) and "4.33" in str(e.value)


def test_output_dir_that_is_a_file_fails_before_loading(tiny_qwen3, tmp_path):
    f = tmp_path / "out"
    f.write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="is a file, not a folder"):
            train(_cfg(tiny_qwen3, f, overwrite=overwrite))
    assert f.read_text() == "mine"


def test_overwrite_never_deletes_a_folder_the_tool_did_not_make(tiny_qwen3, tmp_path):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "train.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    (mine / "notes.md").write_text("my notes")
    with pytest.raises(ConfigError, match=r"did not make \(notes.md, train.jsonl\)"):
        train(_cfg(tiny_qwen3, mine, overwrite=True, steps=1))
    assert sorted(p.name for p in mine.iterdir()) == ["notes.md", "train.jsonl"]
    done = train(_cfg(tiny_qwen3, tmp_path / "run", steps=1))
    again = train(_cfg(tiny_qwen3, done.output_dir, steps=1, overwrite=True))  # our own run: replaced
    assert again.output_dir.is_dir()


def test_disk_full_while_saving_keeps_the_checkpoint_for_resume(tiny_qwen3, tmp_path, monkeypatch):
    import errno

    import lora_finetune.training.run as run

    real = run.save_adapter

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run, "save_adapter", full_disk)
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as e:
        train(_cfg(tiny_qwen3, out, steps=4, save_steps=2))
    msg = str(e.value)
    assert "The disk is full" in msg and "MiB are free" in msg and "--resume" in msg
    assert not out.exists()
    assert last_complete_checkpoint(tmp_path / ".run.partial" / "checkpoints") is not None
    monkeypatch.setattr(run, "save_adapter", real)
    resumed = train(_cfg(tiny_qwen3, out, steps=4, save_steps=2, resume="auto"))
    assert (resumed.output_dir / "adapter_model.safetensors").is_file()


LAUNCHER_TEARDOWN = """
import os, signal, sys
from types import SimpleNamespace
from lora_finetune.errors import TrainingError
from lora_finetune.training.callbacks import HealthCallback, InterruptCallback
from lora_finetune.training.run import run_trainer

class PeerGone:
    def __init__(self):
        self.callback_handler = SimpleNamespace(callbacks=[HealthCallback(), InterruptCallback()])
        self.state = SimpleNamespace(global_step=4)
        self.eval_dataset = None
    def train(self, resume_from_checkpoint=None):
        raise RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:29500")

try:
    run_trainer(PeerGone(), None, __import__("pathlib").Path(sys.argv[1]))
except TrainingError as e:
    os.kill(os.getpid(), signal.SIGTERM)  # torchrun's teardown, arriving while the error goes out
    print(e, file=sys.stderr, flush=True)
    sys.exit(1)
"""


def test_a_lost_peer_is_reported_though_the_launcher_sigterms_at_once(tmp_path):
    """Under torchrun/accelerate a dead rank gets every other rank SIGTERMed at once. The rank that
    caught the lost collective must still say what happened and how to resume (before: the default
    handler, restored as training ended, killed it silently, exit -15, in one run of three)."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER_TEARDOWN, str(tmp_path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Another process of this run stopped at step 4" in proc.stderr
    assert "again with --resume" in proc.stderr


def test_sigterm_held_only_by_the_process_that_asked():
    """hold_sigterm leaves SIGTERM noted-not-obeyed after uninstall; without it the previous
    handler comes back (a library user's process is left as it was)."""
    from lora_finetune.training.callbacks import InterruptCallback

    before, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    i = InterruptCallback()
    i.install()
    i.uninstall()
    assert signal.getsignal(signal.SIGTERM) is before
    i.install()
    i.hold_sigterm()
    i.uninstall()
    try:
        held = signal.getsignal(signal.SIGTERM)
        assert held is not before and held not in (signal.SIG_DFL, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGINT) is before_int  # Ctrl-C works as before
    finally:
        signal.signal(signal.SIGTERM, before)
