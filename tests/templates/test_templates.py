"""Label masks: prompt tokens -100, every answer and its EOS learned, pad == eos safe."""

from __future__ import annotations

import pytest

from lora_finetune.data.collate import IGNORE_INDEX, PadCollator
from lora_finetune.data.formats import records_from_rows
from lora_finetune.templates import get_template
from lora_finetune.templates.chat import ChatTemplate
from lora_finetune.templates.encode import encode_prompt, encode_records, tokenize
from lora_finetune.templates.qa import QATemplate, format_sample


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _learned_spans(tok, enc):
    """Decode each contiguous run of learned labels."""
    spans, cur = [], []
    for t, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE_INDEX:
            assert lab == t  # a learned label is the token itself
            cur.append(t)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    return spans


SINGLE = {"instruction": "中国的首都是哪里？", "input": "", "output": "北京。"}
MULTI = {
    "messages": [
        {"role": "system", "content": "answer briefly"},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hello world"},
        {"role": "user", "content": "计算 3 加 5"},
        {"role": "assistant", "content": "8。"},
    ]
}


def test_pad_equals_eos_in_fixture(tiny_tokenizer):
    assert tiny_tokenizer.pad_token_id == tiny_tokenizer.eos_token_id


def test_chat_single_turn_exact_mask(tiny_tokenizer):
    tok = tiny_tokenizer
    rec = records_from_rows([SINGLE])[0]
    [enc], stats = encode_records([rec], tok, get_template("chat", tok), 512)
    prompt = "<|im_start|>user\n中国的首都是哪里？<|im_end|>\n<|im_start|>assistant\n"
    answer = "北京。<|im_end|>"
    expected_ids = _ids(tok, prompt) + _ids(tok, answer) + _ids(tok, "\n")
    expected_labels = (
        [IGNORE_INDEX] * len(_ids(tok, prompt)) + _ids(tok, answer) + [IGNORE_INDEX] * len(_ids(tok, "\n"))
    )
    assert enc.input_ids == expected_ids
    assert enc.labels == expected_labels
    # the last learned token is EOS, which is also the pad token
    learned = [lab for lab in enc.labels if lab != IGNORE_INDEX]
    assert learned[-1] == tok.eos_token_id == tok.pad_token_id
    assert stats.kept == 1 and stats.answer_tokens == len(_ids(tok, answer))


def test_chat_multi_turn_every_answer_learned(tiny_tokenizer):
    tok = tiny_tokenizer
    rec = records_from_rows([MULTI])[0]
    [enc], _ = encode_records([rec], tok, get_template("chat", tok), 512)
    assert _learned_spans(tok, enc) == ["Hello world<|im_end|>", "8。<|im_end|>"]
    # the system prompt and both user turns are masked
    text = tok.decode(enc.input_ids)
    assert text.startswith("<|im_start|>system\nanswer briefly<|im_end|>\n<|im_start|>user\nHello")


def test_qa_template_exact_text_and_labels(tiny_tokenizer):
    tok = tiny_tokenizer
    assert (
        format_sample({"instruction": "问题", "input": "信息", "output": "答案"})
        == "问：问题\n补充信息：信息\n答：答案"
    )
    assert format_sample({"instruction": "问题", "input": "", "output": "答案"}) == "问：问题\n答：答案"
    rec = records_from_rows([{"instruction": "中国的首都是哪里？", "input": "补充", "output": "北京。"}])[0]
    tmpl = get_template("qa", tok)
    assert isinstance(tmpl, QATemplate) and tmpl.stop_tokens == ("<|im_end|>",)
    [enc], _ = encode_records([rec], tok, tmpl, 512)
    prompt = "问：中国的首都是哪里？\n补充信息：补充\n答："
    assert enc.input_ids == _ids(tok, prompt) + _ids(tok, "北京。<|im_end|>")
    assert enc.labels[: len(_ids(tok, prompt))] == [IGNORE_INDEX] * len(_ids(tok, prompt))
    assert enc.labels[-1] == tok.eos_token_id


def test_qa_multi_turn(tiny_tokenizer):
    tok = tiny_tokenizer
    rec = records_from_rows([MULTI])[0]
    [enc], _ = encode_records([rec], tok, get_template("qa", tok), 512)
    assert _learned_spans(tok, enc) == ["Hello world<|im_end|>", "8。<|im_end|>"]
    assert tok.decode(enc.input_ids) == (
        "answer briefly\n问：Hello\n答：Hello world<|im_end|>\n问：计算 3 加 5\n答：8。<|im_end|>"
    )


def test_collator_pads_by_position_and_keeps_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    recs = records_from_rows([SINGLE, MULTI])
    encs, _ = encode_records(recs, tok, get_template("chat", tok), 512)
    batch = PadCollator(tok.pad_token_id)([{"input_ids": e.input_ids, "labels": e.labels} for e in encs])
    short, long_ = sorted(encs, key=lambda e: len(e.input_ids))
    row = 0 if len(encs[0].input_ids) < len(encs[1].input_ids) else 1
    n = len(short.input_ids)
    labels = batch["labels"][row].tolist()
    assert labels[:n] == short.labels  # EOS inside the answer still learned
    assert all(x == IGNORE_INDEX for x in labels[n:])  # padding ignored by position
    assert batch["input_ids"][row, n:].eq(tok.pad_token_id).all()
    assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (len(labels) - n)
    assert tok.eos_token_id in [x for x in labels if x != IGNORE_INDEX]


def test_too_long_samples_are_dropped_and_counted(tiny_tokenizer):
    tok = tiny_tokenizer
    recs = records_from_rows([SINGLE, {"instruction": "x " * 300, "output": "y"}])
    encs, stats = encode_records(recs, tok, get_template("chat", tok), 64)
    assert len(encs) == 1 and stats.too_long == 1 and stats.kept == 1
    # the kept sample still ends with its EOS learned
    assert encs[0].labels[encs[0].labels.index(tok.eos_token_id)] == tok.eos_token_id
    assert "1 dropped" in stats.summary(64)


def test_auto_template(tiny_models):
    from transformers import AutoTokenizer

    assert isinstance(get_template("auto", AutoTokenizer.from_pretrained(tiny_models["qwen3"])), ChatTemplate)
    assert isinstance(get_template("auto", AutoTokenizer.from_pretrained(tiny_models["gpt2"])), QATemplate)


def test_chat_template_missing_is_a_clear_error(tiny_models):
    from transformers import AutoTokenizer

    from lora_finetune.errors import ConfigError

    with pytest.raises(ConfigError, match="template: qa"):
        get_template("chat", AutoTokenizer.from_pretrained(tiny_models["gpt2"]))


def test_tokenize_does_not_pad(tiny_tokenizer):
    from lora_finetune.data.demo import build_dummy_dataset

    ds = build_dummy_dataset()
    assert len(ds) == 20 and set(ds.column_names) == {"instruction", "input", "output"}
    out = tokenize(ds, tiny_tokenizer, template="qa")
    lengths = {len(x) for x in out["input_ids"]}
    assert len(out) == 20 and len(lengths) > 1  # per-sample lengths: no padding to 768
    for ids, labels in zip(out["input_ids"], out["labels"]):
        assert labels[-1] == tiny_tokenizer.eos_token_id and len(ids) == len(labels)


def test_generation_prompt_matches_training_prefix(tiny_tokenizer):
    """What inference feeds the model is exactly the masked prefix training used."""
    tok = tiny_tokenizer
    for name in ("chat", "qa"):
        tmpl = get_template(name, tok)
        rec = records_from_rows([MULTI])[0]
        [enc], _ = encode_records([rec], tok, tmpl, 512)
        prompt_rec = {"system": rec["system"], "messages": rec["messages"][:-1]}
        prompt = encode_prompt(prompt_rec, tok, tmpl)
        assert enc.input_ids[: len(prompt)] == prompt
        assert all(x == IGNORE_INDEX for x in enc.labels[len(prompt) - 1 : len(prompt)])
        assert enc.labels[len(prompt)] != IGNORE_INDEX


# Qwen3's chat template logic (abridged from the published one): earlier answers are rendered
# without the <think></think> block that the last answer gets, so the history is not a prefix
# of the full conversation.
QWEN3 = """{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}{%- if ns.multi_step_tool and message.role == "user" %}{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}
{%- for message in messages %}{%- set content = message.content %}
{%- if (message.role == "user") or (message.role == "system" and not loop.first) %}{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
{%- elif message.role == "assistant" %}{%- set reasoning_content = '' %}
{%- if loop.index0 > ns.last_query_index %}{%- if loop.last or (not loop.last and reasoning_content) %}{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}{{- '<|im_end|>\\n' }}
{%- endif %}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"""


def test_qwen3_style_template_multi_turn(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = QWEN3
    rows = [
        {
            "messages": [
                {"role": "user", "content": "U1"},
                {"role": "assistant", "content": "A1"},
                {"role": "user", "content": "U2 long question"},
                {"role": "assistant", "content": "A2"},
            ]
        }
    ]
    rec = records_from_rows(rows)[0]
    tmpl = get_template("chat", tok)
    [enc], _ = encode_records([rec], tok, tmpl, 512)
    real = tok.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in rec["messages"]], tokenize=False, enable_thinking=False
    )
    assert tok.decode(enc.input_ids) == real.rstrip("\n") + "\n"
    assert _learned_spans(tok, enc) == ["A1<|im_end|>", "A2<|im_end|>"]
    # the chat prompt for turn 2 is exactly what the template renders for generation
    prompt = encode_prompt({"system": None, "messages": rec["messages"][:3]}, tok, tmpl)
    assert tok.decode(prompt) == tok.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in rec["messages"][:3]],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )
    assert "<think>" not in tok.decode(enc.input_ids).split("U2")[0]  # history as Qwen3 renders it


def test_seed_is_an_accepted_old_name_of_qa(tiny_tokenizer):
    """The lesson document called the 问/补充信息/答 format `seed`; old configs keep working."""
    from lora_finetune.choices import canonical_template

    assert canonical_template("seed") == "qa"
    assert isinstance(get_template("seed", tiny_tokenizer), QATemplate)
    out = tokenize(build_dummy_dataset_rows(), tiny_tokenizer, template="seed")
    assert out["input_ids"] == tokenize(build_dummy_dataset_rows(), tiny_tokenizer, template="qa")["input_ids"]


def build_dummy_dataset_rows():
    from lora_finetune.data.demo import build_dummy_dataset

    return build_dummy_dataset()
