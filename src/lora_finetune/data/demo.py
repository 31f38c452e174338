"""The 20 demo samples of the teaching script (`build_dummy_dataset()`), used when no data file
is given: short Chinese instruction/input/output triples."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset

_DUMMY = [
    ("把“你好”翻译成英文。", "", "Hello."),
    ("中国的首都是哪里？", "", "北京。"),
    ("计算 3 加 5 等于多少。", "", "8。"),
    ("给出“快乐”的反义词。", "", "悲伤。"),
    ("用一个词形容大海。", "", "辽阔。"),
    ("一周有几天？", "", "七天。"),
    ("水的化学式是什么？", "", "H2O。"),
    ("判断这句话的情感。", "今天天气真好，我很开心。", "积极。"),
    ("把下面的句子翻译成英文。", "我爱学习。", "I love learning."),
    ("提取句子中的数字。", "我买了3个苹果和5个梨。", "3 和 5。"),
    ("太阳从哪个方向升起？", "", "东方。"),
    ("一年有几个月？", "", "十二个月。"),
    ("写出 10 的平方。", "", "100。"),
    ("总结这句话的主题。", "LoRA 只训练很少的低秩参数来微调大模型。", "高效微调大模型。"),
    ("给出“高”的反义词。", "", "矮。"),
    ("判断下面的数是奇数还是偶数。", "7", "奇数。"),
    ("地球上最大的海洋是什么？", "", "太平洋。"),
    ("把下面的单词翻译成中文。", "apple", "苹果。"),
    ("说出光的三原色。", "", "红、绿、蓝。"),
    ("LoRA 的全称是什么？", "", "Low-Rank Adaptation（低秩适配）。"),
]


def dummy_rows() -> list[dict[str, str]]:
    """The teaching script's 20 demo samples as plain alpaca rows."""
    return [{"instruction": i, "input": x, "output": o} for i, x, o in _DUMMY]


def build_dummy_dataset() -> Dataset:
    """The teaching script's `build_dummy_dataset()`: 20 instruction/input/output samples as a `Dataset`."""
    from datasets import Dataset

    return Dataset.from_list(dummy_rows())
