"""中文 mode: every text the page writes has a Chinese version (a setting or label added without
one fails here), the language switch reaches every labelled component, and errors in 中文 mode
are Chinese or carry the lead-in `出错：`."""

from __future__ import annotations

import re
import string

import pytest

from lora_finetune.errors import ConfigError, DataError

ZH = "中文"


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_label_and_message_has_a_chinese_text():
    from lora_finetune.webui.i18n import CJK, LABELS, SAME_IN_BOTH, STATES

    for table in (LABELS, STATES):
        for key, (en, zh) in table.items():
            assert zh.strip(), f"{key}: no Chinese text"
            # the Chinese text fills in what the English one does (it may leave a name out)
            assert fields(zh) <= fields(en), f"{key}: {fields(zh) - fields(en)} not in the English text"
            words = re.sub(r"\{[^}]*\}", "", en)  # punctuation around placeholders needs no translation
            if key not in SAME_IN_BOTH and re.search(r"[A-Za-z]", words):
                assert zh != en and CJK.search(zh), f"{key}: {zh!r} is not Chinese"


def test_every_setting_on_the_page_has_a_chinese_name_and_help():
    from lora_finetune.config import FIELD_DOCS
    from lora_finetune.webui.actions import MORE_FIELDS, TRAIN_FIELDS
    from lora_finetune.webui.i18n import CJK, setting_info, setting_label

    for name in (*TRAIN_FIELDS, *MORE_FIELDS):
        assert FIELD_DOCS.get(name), f"{name}: the config has no doc for it (the English help)"
        label, info = setting_label(name, ZH), setting_info(name, ZH)
        assert label != setting_label(name, "English") and CJK.search(label), f"{name}: no Chinese name"
        assert label.endswith(f"({name})"), f"{name}: the Chinese label keeps the config key, as YAML writes it"
        assert info != setting_info(name, "English") and CJK.search(info), f"{name}: no Chinese help"


def test_tables_rows_and_data_kinds_have_chinese_names():
    from lora_finetune.data import KIND_NAMES
    from lora_finetune.webui.i18n import (
        ANSWERS_ZH,
        CJK,
        COLUMNS,
        DATA_KINDS_ZH,
        ESTIMATE_ROWS,
        SAME_IN_BOTH,
        WHAT,
        estimate_row,
    )

    assert set(DATA_KINDS_ZH) == set(KIND_NAMES)
    for table in (COLUMNS, ESTIMATE_ROWS, DATA_KINDS_ZH, ANSWERS_ZH, WHAT):
        for key, zh in table.items():
            assert key in SAME_IN_BOTH or (zh != key and CJK.search(zh)), f"{key}: {zh!r}"
    # the memory panel's row names and explanations (tools/estimate.py) are all covered
    from lora_finetune.tools.estimate import Setup, estimate_memory

    shape = _toy_shape()
    for setup in (Setup(device="cpu", dtype="fp32"), Setup(quantization="4bit", gradient_checkpointing=True)):
        for name, _, why in estimate_memory(shape, setup).rows():
            zh_name, zh_why = estimate_row(name, why, ZH)
            assert CJK.search(zh_name), name
            assert not re.search(r"\b(weights|parameters|tokens|moments|misc|vocab)\b", zh_why), zh_why


def _toy_shape():
    from lora_finetune.tools.estimate import LinearShape, ModelShape

    linears = [
        LinearShape(s, i, o, 2)
        for s, i, o in [("q_proj", 64, 64), ("k_proj", 64, 16), ("v_proj", 64, 16), ("o_proj", 64, 64)]
    ]
    linears += [LinearShape(s, 64, 128, 2) for s in ("gate_proj", "up_proj")] + [LinearShape("down_proj", 128, 64, 2)]
    return ModelShape("qwen3", 1000, 64, 2, 4, 1, 16, 128, linears, 64000, 0, 500, qk_norm=True)


@pytest.fixture(scope="module")
def demo(adapter, tmp_path_factory):
    import shutil

    from lora_finetune.webui.actions import WebUI
    from lora_finetune.webui.app import build_app
    from lora_finetune.webui.paths import Workdir

    wd = Workdir.create(tmp_path_factory.mktemp("webui-i18n"))
    shutil.copytree(adapter, wd.outputs / "ad")
    return build_app(wd, WebUI(wd))


def _choice_labels(update: dict) -> list[str]:
    return [c[0] if isinstance(c, (tuple, list)) else c for c in update.get("choices") or []]


def test_the_language_switch_reaches_every_labelled_component(demo):
    """Every component with a label (or a button's text) is relabelled; in 中文 mode each text it
    gets is Chinese (but a parameter's own name, a letter, an adapter's name)."""
    import gradio as gr

    from lora_finetune.webui.i18n import CJK

    relabeled = {id(c) for c in demo.relabeled}
    for comp in demo.blocks.values():
        if getattr(comp, "elem_id", None) == "lang":  # "Language / 语言": both at once
            continue
        text = comp.value if isinstance(comp, gr.Button) else getattr(comp, "label", None)
        if text:
            assert id(comp) in relabeled, f"{type(comp).__name__} {text!r} keeps its English text in 中文 mode"
    same = {"top_p", "A", "B", "—", "ad"}
    zh, en = demo.relabel(ZH), demo.relabel("English")
    assert len(zh) == len(demo.relabeled)
    for comp, up_zh, up_en in zip(demo.relabeled, zh, en):
        for attr in ("label", "info", "value", "x_title", "y_title"):
            if attr in up_zh:
                assert up_zh[attr] in same or CJK.search(up_zh[attr]), f"{comp}: {attr} {up_zh[attr]!r}"
                assert up_en[attr] in same or up_en[attr] != up_zh[attr], f"{comp}: {attr} {up_en[attr]!r}"
        for label in _choice_labels(up_zh):
            assert label in same or CJK.search(label), f"{comp}: choice {label!r}"
    labels = [u.get("label") for u in zh]
    assert "学习率 (learning_rate)" in labels and "开始评估" not in labels  # a button's text is its value
    assert "开始评估" in [u.get("value") for u in zh] and "开始导出" in [u.get("value") for u in zh]
    infos = [u.get("info") for u in zh if u.get("info")]
    assert "优化器的峰值学习率。" in infos
    choices = [label for u in zh for label in _choice_labels(u)]
    assert "ad：基础模型" in choices and "merge：把适配器合并进基础模型（safetensors）" in choices


def test_errors_in_chinese_mode():
    import gradio as gr

    from lora_finetune.webui.app import friendly
    from lora_finetune.webui.i18n import bilingual

    @friendly
    def library(lang):  # the package's message: English, after the lead-in
        raise ConfigError("the LoRA rank must be a positive integer")

    @friendly
    def own(lang):  # the web UI's own: its Chinese text
        raise bilingual(DataError("The uploaded file x is empty."), "上传的文件 x 是空的。")

    @friendly
    def bug(lang):
        raise ZeroDivisionError("division by zero")

    for fn, zh_text, en_text in (
        (library, "出错：the LoRA rank must be a positive integer", "the LoRA rank must be a positive integer"),
        (own, "出错：上传的文件 x 是空的。", "The uploaded file x is empty."),
    ):
        with pytest.raises(gr.Error) as e:
            fn(ZH)
        assert e.value.message == zh_text and e.value.title == "错误"
        with pytest.raises(gr.Error) as e:
            fn("English")
        assert e.value.message == en_text and e.value.title == "Error"
    with pytest.raises(gr.Error) as e:
        bug(ZH)
    assert e.value.message.startswith("出错：意外错误（ZeroDivisionError: division by zero）")
    assert "Traceback" not in e.value.message


def test_the_web_uis_own_errors_are_bilingual(tmp_path):
    from lora_finetune.webui.i18n import error_text
    from lora_finetune.webui.jobs import JobManager
    from lora_finetune.webui.paths import Workdir

    wd = Workdir.create(tmp_path)
    cases = [
        (lambda: wd.resolve("../../etc/passwd", "data file"), "数据文件 '../../etc/passwd' 指向工作目录"),
        (lambda: wd.resolve("data/none.jsonl", "data file"), "中没有数据文件 'data/none.jsonl'"),
        (lambda: wd.name("../x", "run name"), "运行名称 '../x' 不是简单名称"),
        (lambda: JobManager(wd.state).stop("x"), "没有名为 'x' 的训练在运行"),
    ]
    for call, zh in cases:
        with pytest.raises(ConfigError) as e:
            call()
        assert error_text(e.value, ZH).startswith("出错：") and zh in error_text(e.value, ZH)
        assert error_text(e.value, "English") == str(e.value)
