"""Config: the seed's defaults, file + overrides, every problem reported at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_finetune.config import LoRAFinetuneConfig, load_config, parse_overrides
from lora_finetune.errors import ConfigError


def test_seed_defaults():
    c = LoRAFinetuneConfig()
    assert (c.model_name, c.output_dir, c.r, c.alpha, c.dropout, c.learning_rate, c.batch_size, c.steps) == (
        "Qwen/Qwen3-0.6B",
        Path("./outputs/chatglm_lora"),
        8,
        32,
        0.05,
        1e-4,
        2,
        50,
    )
    assert c.max_length == 768 and c.eval_fraction == 0.1 and c.target_modules == "auto"
    assert c.quantization == "none" and c.dtype == "auto" and c.trust_remote_code is False


def test_yaml_json_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("r: 16\nlearning_rate: 2e-4\ntarget_modules: [q_proj, v_proj]\n")
    c = load_config(y, parse_overrides(["--steps", "7", "--dropout=0.1", "--overwrite"]))
    assert c.r == 16 and c.learning_rate == 2e-4 and c.target_modules == ["q_proj", "v_proj"]
    assert c.steps == 7 and c.dropout == 0.1 and c.overwrite is True
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"r": 4, "quantization": "4bit"}))
    c = load_config(j, {"target_modules": "q_proj,k_proj"})
    assert c.r == 4 and c.quantization == "4bit" and c.target_modules == ["q_proj", "k_proj"]


def test_all_problems_reported_together(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text(
        "lora_r: 8\nlerning_rate: 1e-4\nr: 0\ndropout: 1.5\neval_fraction: 1.0\nquantization: 3bit\nsteps: many\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(y)
    msg = str(e.value)
    assert "7 problem(s)" in msg
    assert "`lora_r` and `r` are the same setting (r) with different values (8 and 0)" in msg
    assert "unknown key `lerning_rate`" in msg and "did you mean `learning_rate`" in msg
    assert "r=0" in msg and "dropout=1.5" in msg and "eval_fraction=1.0" in msg
    assert "quantization='3bit'" in msg and "none, 4bit, 8bit" in msg
    assert "steps='many'" in msg and "integer" in msg
    assert str(y) in msg


def test_bad_yaml_names_line(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("r: 8\nalpha: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml, line \d+"):
        load_config(y)


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="--key value"):
        parse_overrides(["steps", "3"])


def test_single_target_name_is_a_list():
    assert load_config(None, {"target_modules": "q_proj"}).target_modules == ["q_proj"]
    assert load_config(None, {"target_modules": "all-linear"}).target_modules == "all-linear"


def test_scheduler_typo_and_checkpoint_limit_reported_with_the_rest():
    with pytest.raises(ConfigError) as e:
        load_config(None, {"lr_scheduler_type": "cosin", "save_total_limit": "1", "r": "0"})
    msg = str(e.value)
    assert "3 problem(s)" in msg and "did you mean `cosine`" in msg
    assert "save_total_limit=1" in msg and "at least 2" in msg


@pytest.mark.parametrize(
    "key,value,why",
    [
        ("learning_rate", "nan", "positive, finite"),
        ("learning_rate", "inf", "positive, finite"),
        ("max_grad_norm", "nan", "finite number >= 0"),
        ("weight_decay", "-5", "finite number >= 0"),
        ("seed", "-1", "between 0 and 4294967295"),
        ("seed", str(2**32), "between 0 and 4294967295"),
        ("lr_scheduler_type", "reduce_lr_on_plateau", "needs an evaluation metric"),
        ("lr_scheduler_type", "cosine_with_min_lr", "min_lr or min_lr_rate"),
        ("lr_scheduler_type", "cosin", "did you mean `cosine`"),
    ],
)
def test_values_that_make_no_sense_are_config_errors(key, value, why):
    with pytest.raises(ConfigError, match=why):
        load_config(None, {key: value})


def test_all_value_problems_at_once():
    with pytest.raises(ConfigError, match=r"has 4 problem\(s\)"):
        load_config(None, {"learning_rate": "nan", "weight_decay": "-1", "seed": "-1", "max_grad_norm": "inf"})


def test_names_from_other_tools_are_accepted_and_recorded_as_ours():
    cfg = load_config(
        None,
        {
            "lora_rank": "16",
            "lora_alpha": "32",
            "lora_dropout": "0.1",
            "per_device_train_batch_size": "4",
            "max_steps": "7",
            "cutoff_len": "256",
            "lora_target": "q_proj,v_proj",
            "learning-rate": "2e-4",
        },
    )
    assert (cfg.r, cfg.alpha, cfg.dropout, cfg.batch_size, cfg.steps, cfg.max_length) == (16, 32, 0.1, 4, 7, 256)
    assert cfg.target_modules == ["q_proj", "v_proj"] and cfg.learning_rate == 2e-4
    assert "lora_rank" not in cfg.to_dict() and cfg.to_dict()["r"] == 16


def test_two_spellings_of_one_key_must_agree():
    with pytest.raises(ConfigError, match=r"`lora_rank` and `r` are the same setting \(r\)"):
        load_config(None, {"lora_rank": "8", "r": "16"})
    assert load_config(None, {"lora_rank": "8", "r": "8"}).r == 8


def test_did_you_mean_knows_the_other_spellings():
    with pytest.raises(ConfigError, match=r"did you mean `lora_rank` \(our `r`\)"):
        load_config(None, {"lora_rnk": "8"})


def test_epochs_or_steps():
    cfg = load_config(None, {"num_train_epochs": "2"})
    assert cfg.epochs == 2.0 and cfg.steps is None
    with pytest.raises(ConfigError, match="both given"):
        load_config(None, {"steps": "10", "epochs": "1"})
    with pytest.raises(ConfigError, match="positive number of passes"):
        load_config(None, {"epochs": "0"})
