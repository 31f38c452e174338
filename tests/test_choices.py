"""Choice lists are defined once (choices.py) and the config, the CLI and --help all read them."""

from __future__ import annotations

import argparse

import pytest

from lora_finetune import choices
from lora_finetune.cli import build_parser
from lora_finetune.config import LoRAFinetuneConfig, load_config
from lora_finetune.errors import ConfigError


def _verb_choices(verb: str) -> dict[str, tuple[str, ...]]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: tuple(a.choices) for a in sub.choices[verb]._actions if a.choices}


def test_cli_flags_offer_exactly_the_shared_choices():
    for verb in ("chat", "generate", "eval"):
        flags = _verb_choices(verb)
        assert flags["template"] == (*choices.TEMPLATES, *choices.TEMPLATE_ALIASES)
        assert flags["quantization"] == choices.QUANTIZATIONS
        assert flags["dtype"] == choices.DTYPES
    assert _verb_choices("generate")["data_format"] == choices.DATA_FORMATS
    assert _verb_choices("merge")["dtype"] == choices.MERGE_DTYPES
    assert _verb_choices("estimate")["quantization"] == choices.QUANTIZATIONS


def test_config_rejects_what_the_choice_lists_do_not_hold():
    with pytest.raises(ConfigError) as e:
        load_config(None, {"template": "alpaca", "quantization": "3bit", "data_format": "csv"})
    msg = str(e.value)
    for field, values in (
        ("template", choices.TEMPLATES),
        ("quantization", choices.QUANTIZATIONS),
        ("data_format", choices.DATA_FORMATS),
    ):
        assert field in msg and ", ".join(values) in msg
    for name in choices.TEMPLATES + choices.QUANTIZATIONS:
        assert name in msg


def test_config_fields_are_typed_with_the_shared_literals():
    hints = LoRAFinetuneConfig.__annotations__
    assert hints["template"] in ("TemplateName", choices.TemplateName)
    assert hints["quantization"] in ("Quantization", choices.Quantization)


def test_the_old_template_name_is_accepted_everywhere_and_stored_as_the_new_one():
    assert load_config(None, {"template": "seed"}).template == "qa"
    assert choices.canonical_template("seed") == "qa"
    assert choices.canonical_template("chat") == "chat"
    args = build_parser().parse_args(["chat", "--adapter", "x", "--template", "seed"])
    assert args.template == "seed"


@pytest.mark.parametrize(
    "text,value",
    [
        ("true", True),
        ("Yes", True),
        ("on", True),
        ("1", True),
        ("FALSE", False),
        ("no", False),
        ("off", False),
        ("0", False),
        (True, True),
        (False, False),
    ],
)
def test_parse_bool(text, value):
    assert choices.parse_bool(text) is value


@pytest.mark.parametrize("bad", ["maybe", "", "2", None])
def test_parse_bool_rejects_other_values(bad):
    with pytest.raises(ValueError, match="true or false"):
        choices.parse_bool(bad)


def test_every_method_has_its_data_kind_and_step_shape():
    """A method added to `Method` without its tables would plan memory (and draw the web UI's panel)
    from a KeyError; the panel and the run's planning read the same tables."""
    from lora_finetune.training.stages import STAGES

    assert set(choices.METHOD_KIND) == set(choices.METHODS) == set(choices.METHOD_SEQUENCES) == set(STAGES)
    assert choices.METHOD_FUSED_LOGITS <= set(choices.METHODS)
    assert {m for m, n in choices.METHOD_SEQUENCES.items() if n == 2} == {"dpo", "orpo", "simpo", "kto"}
    assert STAGES["dpo"].sequences_per_sample == 2 and STAGES["dpo"].fused_logits
    assert STAGES["orpo"].sequences_per_sample == 2 and not STAGES["orpo"].fused_logits
