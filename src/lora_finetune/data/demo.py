"""Demo data, used when no data file is given: the teaching script's 20 instruction samples
(`build_dummy_dataset()`), and for the other methods a small Chinese preference set (a question
answered in Chinese -- chosen -- and in English -- rejected), the same answers labelled for KTO,
and the instruction samples as plain text for continued pretraining."""

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
    ("中国的首都是哪里？", "中国的首都是北京。", "The capital of China is Beijing."),
    ("一周有几天？", "一周有七天。", "A week has seven days."),
    ("水的化学式是什么？", "水的化学式是 H2O。", "The chemical formula of water is H2O."),
    ("太阳从哪个方向升起？", "太阳从东方升起。", "The sun rises in the east."),
    ("一年有几个月？", "一年有十二个月。", "A year has twelve months."),
    ("地球上最大的海洋是什么？", "地球上最大的海洋是太平洋。", "The largest ocean on Earth is the Pacific."),
    ("说出光的三原色。", "光的三原色是红、绿、蓝。", "The three primary colors of light are red, green and blue."),
    ("计算 3 加 5 等于多少。", "3 加 5 等于 8。", "3 plus 5 equals 8."),
    ("写出 10 的平方。", "10 的平方是 100。", "The square of 10 is 100."),
    ("给出“快乐”的反义词。", "“快乐”的反义词是“悲伤”。", "The opposite of happy is sad."),
    ("用一个词形容大海。", "辽阔。", "Vast."),
    ("判断 7 是奇数还是偶数。", "7 是奇数。", "7 is an odd number."),
    ("熊猫主要吃什么？", "熊猫主要吃竹子。", "Pandas mainly eat bamboo."),
    ("一天有多少小时？", "一天有二十四小时。", "A day has twenty-four hours."),
    ("冰在多少摄氏度融化？", "冰在 0 摄氏度融化。", "Ice melts at 0 degrees Celsius."),
    (
        "世界上最高的山峰是什么？",
        "世界上最高的山峰是珠穆朗玛峰。",
        "The highest mountain in the world is Mount Everest.",
    ),
    ("长城在哪个国家？", "长城在中国。", "The Great Wall is in China."),
    ("一小时有多少分钟？", "一小时有六十分钟。", "An hour has sixty minutes."),
    ("彩虹有几种颜色？", "彩虹有七种颜色。", "A rainbow has seven colors."),
    ("人有几只手？", "人有两只手。", "A person has two hands."),
    ("给出“高”的反义词。", "“高”的反义词是“矮”。", "The opposite of tall is short."),
    ("蜜蜂会酿什么？", "蜜蜂会酿蜂蜜。", "Bees make honey."),
    ("计算 6 乘 7 等于多少。", "6 乘 7 等于 42。", "6 times 7 equals 42."),
    ("月亮绕着什么转？", "月亮绕着地球转。", "The moon goes around the Earth."),
    ("秋天之后是什么季节？", "秋天之后是冬天。", "Winter comes after autumn."),
    ("猫通常怎么叫？", "猫通常“喵喵”地叫。", "Cats usually say meow."),
    (
        "植物进行光合作用需要什么？",
        "植物进行光合作用需要阳光、水和二氧化碳。",
        "Plants need sunlight, water and carbon dioxide.",
    ),
    ("中国的国宝动物是什么？", "中国的国宝动物是大熊猫。", "China's national treasure animal is the giant panda."),
    ("把“谢谢”翻译成中文解释。", "“谢谢”是表达感激的话。", "Thank you is a way to express gratitude."),
    ("一个三角形有几条边？", "一个三角形有三条边。", "A triangle has three sides."),
]


def preference_rows() -> list[dict[str, str]]:
    """30 Chinese questions, each answered in Chinese (chosen) and in English (rejected): a
    preference the demo's DPO run learns and that shows in chat (`make demo-dpo`)."""
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
