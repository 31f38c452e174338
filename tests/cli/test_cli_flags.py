"""True/false settings that are also flags: `--flag` alone, `--flag true|false`, on every verb.

The config spells them `overwrite: true` and `resume: auto`, the docs say settings are given
as `--key value`, and `make demo` passes `--overwrite true`: those spellings must work on the
command line too, not stop with "Unexpected argument `true`".
"""

from __future__ import annotations

import argparse

import pytest

from lora_finetune.cli import build_parser, main
from lora_finetune.cli.flags import parse_bool_flag


def _verb_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _bool_flags() -> list[tuple[str, str, str]]:
    """(verb, option string, dest) of every true/false flag of every verb."""
    out = []
    for verb, p in _verb_parsers().items():
        for a in p._actions:
            if a.type is parse_bool_flag:
                out.append((verb, a.option_strings[0], a.dest))
    return out


def test_no_verb_has_a_flag_that_refuses_a_value():
    """A `store_true` flag turns `--flag true` into an unexpected argument; none is left (the
    global -v/--verbose comes before the verb and stays a plain switch)."""
    plain = [
        (verb, a.option_strings[0])
        for verb, p in _verb_parsers().items()
        for a in p._actions
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction))
    ]
    assert plain == []
    assert len(_bool_flags()) >= 15  # overwrite, base-only, compare-base, loss-only, json, ...


@pytest.mark.parametrize(("verb", "flag", "dest"), _bool_flags())
def test_every_bool_flag_takes_no_value_true_or_false(verb, flag, dest):
    p = _verb_parsers()[verb]
    required = {
        "chat": [],
        "generate": ["--adapter", "a", "--input", "i", "--output", "o"],
        "eval": ["--adapter", "a", "--data", "d"],
        "merge": ["--adapter", "a", "--output", "o"],
        "estimate": ["--model", "m"],
        "modules": ["--model", "m"],
        "export": ["--adapter", "a", "--output", "o"],
        "export-adapter": ["--adapter", "a", "--output", "o"],
        "convert-chatglm": ["src", "dst"],
    }.get(verb, [])
    assert getattr(p.parse_args([*required, flag]), dest) is True
    for word, value in (("true", True), ("yes", True), ("1", True), ("false", False), ("off", False)):
        assert getattr(p.parse_args([*required, flag, word]), dest) is value
        assert getattr(p.parse_args([*required, f"{flag}={word}"]), dest) is value
    # absent: false, or (train) None, so a config file's `overwrite: true` is not overridden
    assert getattr(p.parse_args(required), dest) is (None if verb == "train" else False)


def test_a_bad_value_is_a_clean_error(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["merge", "--adapter", "a", "--output", "o", "--overwrite", "maybe"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "expected true or false, got 'maybe'" in err and "--flag true" in err


def test_train_resume_and_overwrite_spellings(tiny_qwen3, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["train", "--model_name", str(tiny_qwen3), "--output_dir", str(out), "--steps", "2"]
    common += ["--save_steps", "1", "--eval_fraction", "0", "--r", "4", "--dropout", "0"]
    # `--resume auto` with nothing to resume starts a run (the config's `resume: auto`) ...
    assert main([*common, "--resume", "auto"]) == 0
    assert (out / "adapter_model.safetensors").is_file()
    # ... `--overwrite true` replaces it, `--overwrite false` refuses, as the bare flag / no flag do
    assert main([*common, "--overwrite", "true"]) == 0
    capsys.readouterr()
    assert main([*common, "--overwrite", "false"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # `--resume` alone (or `true`) says there must be a checkpoint to continue
    for spelling in (["--resume"], ["--resume", "true"]):
        assert main(["train", "--output_dir", str(tmp_path / "none"), *spelling]) == 2
        assert "no interrupted run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--output_dir", str(out), "--resume", "maybe"])
    assert e.value.code == 2 and "expected auto, true or false" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--adapter", "a", "--data", "d.jsonl", "--max_samples", "0"],
        ["eval", "--adapter", "a", "--data", "d.jsonl", "--batch_size", "-1"],
        ["generate", "--adapter", "a", "--input", "i.jsonl", "--output", "o.jsonl", "--max_new_tokens", "0"],
        ["generate", "--adapter", "a", "--input", "i.jsonl", "--output", "o.jsonl", "--batch_size", "x"],
    ],
)
def test_counts_below_one_are_refused_by_the_parser(argv, capsys):
    """`--max_samples 0` used to reach the scorer and divide by zero; now the parser says it."""
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "must be at least 1" in err or "expected a whole number, got 'x'" in err
