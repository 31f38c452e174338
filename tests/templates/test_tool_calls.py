"""Tool-calling data: OpenAI messages, ShareGPT function_call/observation and LLaMA-Factory's
`tools` field become one record shape; the model's own chat template writes the tools, the
calls and the results; the calls are learned, the results masked."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from lora_finetune.data import records_from_rows
from lora_finetune.errors import ConfigError, DataError
from lora_finetune.templates import get_template

from helpers import train_tokenizer

# Qwen2.5's published chat template (the part that handles tools, calls and results).
QWEN_TOOLS = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    '{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}'
    '{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}'
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}'
    "{%- else %}{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}"
    "{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' }}{{- tool_call.name }}{{- \'", "arguments": \' }}'
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

WEATHER = {
    "name": "get_weather",
    "description": "天气",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
OPENAI_ROW = {
    "tools": [{"type": "function", "function": WEATHER}],
    "messages": [
        {"role": "user", "content": "北京天气怎么样？"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}],
        },
        {"role": "tool", "content": '{"weather": "晴"}'},
        {"role": "assistant", "content": "北京今天晴。"},
    ],
}
SHAREGPT_ROW = {  # LLaMA-Factory's form: tools as JSON text, function_call / observation turns
    "tools": json.dumps([WEATHER], ensure_ascii=False),
    "conversations": [
        {"from": "human", "value": "北京天气怎么样？"},
        {
            "from": "function_call",
            "value": json.dumps({"name": "get_weather", "arguments": {"city": "北京"}}, ensure_ascii=False),
        },
        {"from": "observation", "value": '{"weather": "晴"}'},
        {"from": "gpt", "value": "北京今天晴。"},
    ],
}


@pytest.fixture(scope="module")
def qwen_tools_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen-tools")
    train_tokenizer(folder, QWEN_TOOLS)
    return AutoTokenizer.from_pretrained(folder)


def test_openai_and_sharegpt_tool_data_normalise_to_the_same_record():
    [a] = records_from_rows([OPENAI_ROW])
    [b] = records_from_rows([SHAREGPT_ROW])
    for rec in (a, b):
        assert rec["tools"] == [{"type": "function", "function": WEATHER}]
        assert [m["role"] for m in rec["messages"]] == ["user", "assistant", "tool", "assistant"]
        assert rec["messages"][1]["tool_calls"] == [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}
        ]
    assert a["messages"] == b["messages"]


@pytest.mark.parametrize(
    "messages,problem",
    [
        ([{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}], "expected a `assistant` turn"),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [{"name": ""}]}],
            "a tool call needs a `name`",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "{bad"}]},
            ],
            "are not valid JSON",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "", "tool_calls": [{"name": "f"}]},
                {"role": "user", "content": "q2"},
            ],
            "expected a `tool` turn",
        ),
    ],
)
def test_bad_tool_turns_are_named(messages, problem):
    with pytest.raises(DataError, match=problem):
        records_from_rows([{"messages": messages}])


def test_calls_are_learned_and_results_masked_with_qwens_template(qwen_tools_tokenizer):
    tok = qwen_tools_tokenizer
    [rec] = records_from_rows([OPENAI_ROW])
    segments = get_template("chat", tok).segments(rec)
    full = tok.apply_chat_template(
        [{k: v for k, v in m.items() if k != "input"} for m in rec["messages"]], tools=rec["tools"], tokenize=False
    )
    assert "".join(text for text, _ in segments) == full  # exactly the model's own rendering
    learned = [text for text, learn in segments if learn]
    assert learned == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call><|im_end|>',
        "北京今天晴。<|im_end|>",
    ]
    prompt = "".join(text for text, learn in segments if not learn)
    assert "<tools>" in prompt and '"get_weather"' in prompt and "<tool_response>" in prompt


def test_plain_templates_refuse_tool_records(qwen_tools_tokenizer):
    [rec] = records_from_rows([OPENAI_ROW])
    with pytest.raises(ConfigError, match="template `qa` cannot write"):
        get_template("qa", qwen_tools_tokenizer).segments(rec)


def test_training_on_tool_calls(tiny_qwen3, tmp_path):
    import shutil

    from lora_finetune.training import train

    from helpers import tiny_config

    model = tmp_path / "qwen-tools-model"
    shutil.copytree(tiny_qwen3, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = QWEN_TOOLS
    tok.save_pretrained(model)
    data = tmp_path / "tools.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [OPENAI_ROW, SHAREGPT_ROW] * 3))
    res = train(tiny_config(model, tmp_path / "run", data_path=str(data), steps=2, eval_fraction=0.0))
    assert res.metrics["samples"]["train"] == 6 and res.resolved.template == "chat"
