"""Keeping the best checkpoint, early stopping, and the overfitting warning."""

from __future__ import annotations

import logging

import pytest
from safetensors.torch import load_file

from lora_finetune.errors import ConfigError
from lora_finetune.training import train
from lora_finetune.training.callbacks import OverfitWarning

from helpers import tiny_config


def _evals(metrics: dict) -> list[tuple[int, float]]:
    return [(h["step"], h["eval_loss"]) for h in metrics["log_history"] if "eval_loss" in h]


def test_the_adapter_is_the_best_checkpoint_when_asked(tiny_qwen3, tmp_path):
    settings = dict(steps=8, eval_steps=1, save_steps=1, learning_rate=5e-2, dropout=0.0)
    best = train(tiny_config(tiny_qwen3, tmp_path / "best", load_best_model_at_end=True, **settings))
    during = _evals(best.metrics)[:-1]  # the last entry is the final evaluation of the kept adapter
    step, loss = min(during, key=lambda e: e[1])
    assert best.metrics["adapter_step"] == step and best.metrics["best_metric"] == pytest.approx(loss)
    assert best.metrics["eval_loss"] == pytest.approx(loss, rel=1e-5)  # the kept weights score the best loss
    last = train(tiny_config(tiny_qwen3, tmp_path / "last", **settings))
    assert last.metrics["adapter_step"] == 8
    if step != 8:  # the best was not the last step: the adapters differ
        a = load_file(str(best.output_dir / "adapter_model.safetensors"))
        b = load_file(str(last.output_dir / "adapter_model.safetensors"))
        assert any(not a[k].equal(b[k]) for k in a)


def test_early_stopping_stops_when_eval_loss_stops_improving(tiny_qwen3, tmp_path):
    # a learning rate too small to move the loss: no evaluation improves on the first
    res = train(
        tiny_config(
            tiny_qwen3,
            tmp_path / "run",
            steps=20,
            eval_steps=1,
            save_steps=1,
            learning_rate=1e-12,
            load_best_model_at_end=True,
            early_stopping_patience=2,
        )
    )
    assert res.metrics["steps"] == 3


def test_best_checkpoint_settings_are_checked_together():
    from lora_finetune.config import load_config

    with pytest.raises(ConfigError) as e:
        load_config(
            None,
            {
                "load_best_model_at_end": "true",
                "eval_fraction": "0",
                "save_steps": "3",
                "eval_steps": "2",
                "early_stopping_patience": "0",
            },
        )
    msg = str(e.value)
    assert "needs evaluation" in msg and "multiple of eval_steps (2)" in msg and "at least 1" in msg
    with pytest.raises(ConfigError, match="needs load_best_model_at_end"):
        load_config(None, {"early_stopping_patience": "2"})


class _Args:
    load_best_model_at_end = False


class _State:
    global_step = 0


def _feed(cb: OverfitWarning, logs: list[tuple[int, dict]]) -> None:
    state = _State()
    for step, entry in logs:
        state.global_step = step
        cb.on_log(_Args(), state, None, logs=entry)


def test_overfitting_warning(caplog):
    cb = OverfitWarning()
    with caplog.at_level(logging.WARNING, logger="lora_finetune.training.callbacks"):
        _feed(
            cb,
            [
                (1, {"loss": 3.0}),
                (1, {"eval_loss": 3.2}),
                (2, {"loss": 1.0}),
                (2, {"eval_loss": 3.9}),
                (3, {"loss": 0.1}),
                (3, {"eval_loss": 4.1}),
            ],
        )
    assert cb.warning and "3.200 -> 3.900 -> 4.100" in cb.warning and "memorising" in caplog.text
    calm = OverfitWarning()  # eval loss falling, or rising while train loss rises too: no warning
    _feed(
        calm,
        [
            (1, {"loss": 3.0}),
            (1, {"eval_loss": 3.2}),
            (2, {"loss": 2.0}),
            (2, {"eval_loss": 3.0}),
            (3, {"loss": 2.5}),
            (3, {"eval_loss": 3.1}),
            (4, {"loss": 2.9}),
            (4, {"eval_loss": 3.3}),
        ],
    )
    assert calm.warning is None


def test_a_choice_by_a_tiny_eval_set_is_called_luck_and_the_plot_marks_the_kept_adapter(tiny_qwen3, tmp_path, caplog):
    """The demo data holds out 2 samples: the run says once that choosing by them is luck, and the
    plot's eval curve ends at the last evaluation during training, the kept adapter's own
    evaluation drawn apart at its step."""
    from lora_finetune.training.report import loss_series

    caplog.set_level(logging.WARNING, logger="lora_finetune")
    settings = dict(steps=6, eval_steps=2, save_steps=2, learning_rate=5e-2, load_best_model_at_end=True)
    res = train(tiny_config(tiny_qwen3, tmp_path / "best", **settings))
    assert caplog.text.count("too few to tell checkpoints apart") == 1
    assert "on 2 held-out sample(s) (" in caplog.text and "load_best_model_at_end: false" in caplog.text
    series = loss_series(res.metrics["log_history"])
    assert [step for step, _ in series["eval"]] == [2, 4, 6]
    assert series["kept_eval"] == pytest.approx(res.metrics["eval_loss"])
    assert (res.output_dir / "loss_curve.png").is_file()


def test_a_large_enough_eval_set_is_not_warned_about():
    from types import SimpleNamespace

    from lora_finetune.training.dataset import BEST_MIN_ANSWER_TOKENS, BEST_MIN_SAMPLES, small_eval_warning

    cfg = SimpleNamespace(load_best_model_at_end=True, early_stopping_patience=None, metric_for_best_model="eval_loss")
    tokens = BEST_MIN_ANSWER_TOKENS // BEST_MIN_SAMPLES + 1
    row = {"input_ids": [1] * (tokens + 3), "labels": [-100] * 3 + [5] * tokens}
    enough = SimpleNamespace(eval=[row] * BEST_MIN_SAMPLES)
    assert small_eval_warning(cfg, enough) is None
    short = SimpleNamespace(eval=[{"labels": [-100, 5]}] * BEST_MIN_SAMPLES)  # many samples, few tokens
    assert f"{BEST_MIN_SAMPLES} held-out sample(s) ({BEST_MIN_SAMPLES} answer tokens)" in small_eval_warning(cfg, short)
    assert small_eval_warning(SimpleNamespace(**{**vars(cfg), "load_best_model_at_end": False}), short) is None


def test_overfitting_on_a_tiny_eval_set_does_not_advise_keeping_the_best(caplog):
    """On 2 held-out samples a rising eval loss is as likely chance: the warning says so and does
    not advise load_best_model_at_end (which would pick a checkpoint by that chance)."""
    from types import SimpleNamespace

    cb = OverfitWarning()
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}] * 2
    loader = SimpleNamespace(dataset=rows)
    state = _State()
    logs = [(1, {"loss": 3.0}), (1, {"eval_loss": 3.2}), (2, {"loss": 1.0}), (2, {"eval_loss": 3.9}),
            (3, {"loss": 0.1}), (3, {"eval_loss": 4.1})]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="lora_finetune.training.callbacks"):
        for step, entry in logs:
            state.global_step = step
            cb.on_log(_Args(), state, None, logs=entry, eval_dataloader=loader)
    assert "but 2 held-out sample(s) (4 answer tokens) are too few to tell" in cb.warning
    assert "load_best_model_at_end" not in cb.warning
