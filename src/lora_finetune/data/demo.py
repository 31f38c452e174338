"""Demo data, used when no data file is given: the teaching script's 20 instruction samples
(`build_dummy_dataset()`), and for the other methods a small Chinese preference set (each question
answered in a complete sentence -- chosen -- and with the bare answer -- rejected, the style the
SFT demo learns), the same answers labelled for KTO, and the instruction samples as plain text
for continued pretraining."""

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


_PAIRS = [
    ("中国的首都是哪里？", "中国的首都是北京。", "北京。"),
    ("一周有几天？", "一周有七天。", "七天。"),
    ("水的化学式是什么？", "水的化学式是 H2O。", "H2O。"),
    ("太阳从哪个方向升起？", "太阳从东方升起。", "东方。"),
    ("一年有几个月？", "一年有十二个月。", "十二个月。"),
    ("地球上最大的海洋是什么？", "地球上最大的海洋是太平洋。", "太平洋。"),
    ("说出光的三原色。", "光的三原色是红、绿、蓝。", "红、绿、蓝。"),
    ("计算 3 加 5 等于多少。", "3 加 5 等于 8。", "8。"),
    ("写出 10 的平方。", "10 的平方是 100。", "100。"),
    ("给出“快乐”的反义词。", "“快乐”的反义词是“悲伤”。", "悲伤。"),
    ("判断 7 是奇数还是偶数。", "7 是奇数。", "奇数。"),
    ("熊猫主要吃什么？", "熊猫主要吃竹子。", "竹子。"),
    ("一天有多少小时？", "一天有二十四小时。", "二十四小时。"),
    ("冰在多少摄氏度融化？", "冰在 0 摄氏度融化。", "0 摄氏度。"),
    ("最高的山峰是什么？", "最高的山峰是珠穆朗玛峰。", "珠穆朗玛峰。"),
    ("长城在哪个国家？", "长城在中国。", "中国。"),
    ("一小时有多少分钟？", "一小时有六十分钟。", "六十分钟。"),
    ("彩虹有几种颜色？", "彩虹有七种颜色。", "七种。"),
    ("人有几只手？", "人有两只手。", "两只。"),
    ("给出“高”的反义词。", "“高”的反义词是“矮”。", "矮。"),
    ("蜜蜂会酿什么？", "蜜蜂会酿蜂蜜。", "蜂蜜。"),
    ("计算 6 乘 7 等于多少。", "6 乘 7 等于 42。", "42。"),
    ("月亮绕着什么转？", "月亮绕着地球转。", "地球。"),
    ("秋天之后是什么季节？", "秋天之后是冬天。", "冬天。"),
    ("猫通常怎么叫？", "猫通常“喵喵”地叫。", "喵喵。"),
    ("植物生长需要什么？", "植物生长需要阳光、水和空气。", "阳光、水和空气。"),
    ("中国的国宝动物是什么？", "中国的国宝动物是大熊猫。", "大熊猫。"),
    ("一个三角形有几条边？", "一个三角形有三条边。", "三条。"),
    ("一年有几个季节？", "一年有四个季节。", "四个。"),
    ("鱼用什么呼吸？", "鱼用鳃呼吸。", "鳃。"),
]


def preference_rows() -> list[dict[str, str]]:
    """30 Chinese questions, each answered in a complete sentence (chosen) and with the bare
    answer (rejected): a preference the DPO demo learns on top of the SFT demo, which answers
    tersely, and that shows in chat (`make demo-dpo`)."""
    return [{"instruction": q, "chosen": c, "rejected": r} for q, c, r in _PAIRS]


def kto_rows() -> list[dict[str, object]]:
    """The preference demo as KTO data: each answer on its own, labelled desirable or not."""
    rows: list[dict[str, object]] = []
    for q, c, r in _PAIRS:
        rows += [{"prompt": q, "completion": c, "label": True}, {"prompt": q, "completion": r, "label": False}]
    return rows


def text_rows() -> list[dict[str, str]]:
    """The 20 instruction samples as plain text, for a continued-pretraining demo."""
    return [{"text": f"{i}{x}{o}"} for i, x, o in _DUMMY]


def demo_rows(kind: str) -> list[dict]:
    """The built-in demo data of a data kind (choices.DATA_KINDS)."""
    return {"instruction": dummy_rows, "preference": preference_rows, "kto": kto_rows, "text": text_rows}[kind]()
