"""Every text the page writes, in English and 中文; `t(key, lang)` picks one.

- LABELS: labels, buttons, tabs, accordions, and the page's own messages (format strings).
- SETTINGS: each training setting's Chinese name and help. The English help is the config's own
  field doc (config.FIELD_DOCS); a setting shown on the page without a Chinese entry here fails
  tests/webui/test_webui_actions.py.
- STATES, COLUMNS, ESTIMATE_ROWS: run states, table headers, the memory panel's rows.
- Errors: the web UI's own carry a Chinese text (`bilingual`); the package's (`LoraFinetuneError`,
  in English) are shown in 中文 mode after the lead-in `出错：` (`error_text`).
"""

from __future__ import annotations

import re
from typing import TypeVar

LANGS = ("English", "中文")
ZH = "中文"

LABELS: dict[str, tuple[str, str]] = {
    "title": ("# lora-finetune", "# lora-finetune 微调工作台"),
    "intro": (
        "Train a LoRA adapter, watch it learn, chat with it, evaluate and export it. "
        "Everything is read from and written to the workdir: `{root}`.",
        "训练 LoRA 适配器、实时查看训练过程、与模型对话、评估并导出。所有文件只在工作目录内读写：`{root}`。",
    ),
    "language": ("Language / 语言", "语言 / Language"),
    # tabs
    "tab_train": ("Train", "训练"),
    "tab_chat": ("Chat", "对话"),
    "tab_eval": ("Evaluate", "评估"),
    "tab_export": ("Export", "导出"),
    # train: model and data
    "model": (
        "Base model (bundled name, hub id, or a folder in the workdir)",
        "基础模型（内置名称、Hub ID 或工作目录中的文件夹）",
    ),
    "trust_remote_code": (
        "Run code shipped with the model (trust_remote_code)",
        "运行模型自带代码（trust_remote_code）",
    ),
    "upload": ("Upload a data file (jsonl, json, csv, parquet)", "上传数据文件（jsonl、json、csv、parquet）"),
    "data_path": (
        "Data file (path in the workdir; empty: the 20 demo samples)",
        "数据文件（工作目录内路径；留空则用 20 条示例数据）",
    ),
    "check_data": ("Check data", "检查数据"),
    "data_stats": ("Data check", "数据检查"),
    "samples": ("First samples (learned tokens highlighted)", "前几条样本（高亮部分为模型学习的答案）"),
    "learned": ("learned", "学习"),
    "run_name": ("Run name (folder under outputs/)", "运行名称（outputs/ 下的文件夹名）"),
    "settings": ("Settings", "训练参数"),
    "more_settings": ("More settings", "更多参数"),
    "estimate_gpu": ("Memory estimate (GPU memory, from config.json)", "显存估算（GPU 显存，依据 config.json）"),
    "estimate_cpu": (
        "Memory estimate (CPU memory as RSS: training runs on this CPU; from config.json)",
        "内存估算（CPU 内存，即 RSS：本机无 GPU，在 CPU 上训练；依据 config.json）",
    ),
    "start": ("Start", "开始训练"),
    "stop": ("Stop (save a checkpoint)", "停止（保存检查点）"),
    "resume": ("Resume", "继续训练"),
    "overwrite": ("Replace an existing run of this name", "覆盖同名的已有运行"),
    "overwrite_export": ("Replace an existing export of this name", "覆盖同名的已有导出"),
    "status": ("Status", "状态"),
    "loss_curve": ("Loss", "损失曲线"),
    "step": ("step", "步数"),
    "loss": ("loss", "损失"),
    "log": ("Log", "日志"),
    # chat
    "model_a": ("Model A", "模型 A"),
    "model_b": ("Model B (optional, side by side)", "模型 B（可选，并排对比）"),
    "refresh": ("Refresh list", "刷新列表"),
    "message": ("Message", "消息"),
    "send": ("Send", "发送"),
    "clear": ("Clear", "清空"),
    "system": ("System prompt (empty: the adapter's own)", "系统提示（留空则使用适配器自带的）"),
    "generation": ("Generation settings", "生成参数"),
    "max_new_tokens": ("max_new_tokens", "最大生成长度（max_new_tokens）"),
    "temperature": ("temperature (0: greedy)", "温度（temperature，0 为贪心解码）"),
    "top_p": ("top_p", "top_p"),
    "repetition_penalty": ("repetition_penalty", "重复惩罚（repetition_penalty）"),
    "chat_a": ("A", "A"),
    "chat_b": ("B", "B"),
    # eval
    "adapter": ("Adapter", "适配器"),
    "eval_data": ("Evaluation data (path in the workdir)", "评估数据（工作目录内路径）"),
    "eval_upload": ("Upload evaluation data", "上传评估数据"),
    "max_samples": ("Max samples (0: all)", "最多样本数（0 为全部）"),
    "compare_base": ("Also measure the base model", "同时评估基础模型"),
    "loss_only": ("Loss only (no generation)", "只算损失（不生成）"),
    "run_eval": ("Evaluate", "开始评估"),
    "metrics": ("Metrics", "指标"),
    "worst": (
        "Worst samples (lowest ROUGE-L; for preference pairs: smallest margin)",
        "最差样本（ROUGE-L 最低；偏好对则为差值最小）",
    ),
    "report": ("Report (JSON, in the workdir)", "报告文件（JSON，在工作目录内）"),
    "bench": ("Standard benchmarks (lm-evaluation-harness)", "标准评测基准（lm-evaluation-harness）"),
    "bench_tasks": (
        "Tasks (comma-separated: ceval-valid, cmmlu, mmlu, ...; lora_demo_zh works offline)",
        "评测任务（逗号分隔：ceval-valid、cmmlu、mmlu 等；lora_demo_zh 无需联网）",
    ),
    "bench_limit": ("Items per task (0: all)", "每个任务最多题数（0 为全部）"),
    "bench_fewshot": ("Few-shot examples (-1: the task's own)", "少样本示例数（-1 为任务默认）"),
    "run_bench": ("Run benchmark", "开始评测"),
    "bench_table": (
        "Accuracy ± standard error; * = difference beyond two standard errors",
        "准确率 ± 标准误；* 表示差异超过两个标准误",
    ),
    # export
    "export_kind": ("What to write", "导出内容"),
    "export_name": ("Output name (folder under exports/)", "输出名称（exports/ 下的文件夹名）"),
    "outtype": ("GGUF number format", "GGUF 数值格式"),
    "run_export": ("Export", "开始导出"),
    "export_result": ("Result", "结果"),
    # export kinds (the radio's choices)
    "kind_merge": (
        "merge: the adapter merged into the base (safetensors)",
        "merge：把适配器合并进基础模型（safetensors）",
    ),
    "kind_gguf": ("gguf: the merged model as one GGUF file", "gguf：合并后的模型，单个 GGUF 文件"),
    "kind_gguf-lora": (
        "gguf-lora: the adapter alone, a llama.cpp LoRA GGUF",
        "gguf-lora：只导出适配器（llama.cpp LoRA GGUF）",
    ),
    "kind_ollama": ("ollama: a GGUF and a Modelfile", "ollama：GGUF 文件加 Modelfile"),
    # messages the page writes (format strings)
    "error_title": ("Error", "错误"),
    "error_lead": ("", "出错："),
    "unexpected": (
        "Unexpected error ({kind}: {first}). The traceback is in the server's log; please report it.",
        "意外错误（{kind}: {first}）。完整的回溯信息在服务器日志中，请报告此问题。",
    ),
    "no_message": ("no message", "无说明"),
    "no_estimate": ("(no estimate: {error})", "（无法估算）{error}"),
    "starting_at": ("{state}: {where} (log {log})", "{state}：{where}（日志 {log}）"),
    "resuming_at": ("{state} (--resume): {where}", "{state}（从检查点继续，--resume）：{where}"),
    "state_message": ("{state}: {message}", "{state}：{message}"),
    "failed_message": ("{state}: {message}", "{state}\n出错：{message}"),
    "progress_steps": ("step {step}/{total} ({pct}%)", "第 {step}/{total} 步（{pct}%）"),
    "eta": ("ETA {eta}", "预计剩余 {eta}"),
    "rewards": ("{split} reward acc {acc:.2f}", "{split}奖励准确率 {acc:.2f}"),
    "reward_margin": (", margin {margin:.3f}", "，差值 {margin:.3f}"),
    "split_train": ("train", "训练集"),
    "split_eval": ("held-out", "留出集"),
    "curve_train": ("train", "训练"),
    "curve_eval": ("eval", "验证"),
    "curve_reward": ("reward acc ({split})", "奖励准确率（{split}）"),
    "base_model_of": ("{name}: base model", "{name}：基础模型"),
    "empty_answer": (
        "(no text: the answer held only special tokens; try temperature > 0 or train longer)",
        "（无文本：回答只含特殊 token；可把温度调到 0 以上，或多训练几步）",
    ),
    "data_header": (
        "{where}: {n} records of {kind} (method {methods}), template `{template}`",
        "{where}：{n} 条{kind}（训练方法 {methods}），模板 `{template}`",
    ),
    "demo_data": ("the demo data ({kind})", "内置示例数据"),
    "data_summary": (
        "{kept} of {total} samples kept; {answer} answer tokens learned, {prompt} prompt tokens masked; "
        "longest {longest} tokens",
        "保留 {kept}/{total} 条样本；学习 {answer} 个答案 token，屏蔽 {prompt} 个提示 token；最长 {longest} 个 token",
    ),
    "data_too_long": (
        "; {n} dropped for being longer than max_length={max_length} (raise max_length to keep them)",
        "；{n} 条超过 max_length={max_length} 被丢弃（调大 max_length 可保留）",
    ),
    "sample_title": ("sample {i}", "样本 {i}"),
    "merged": ("Merged {adapter} into {base} -> {out} ({dtype})", "已把 {adapter} 合并进 {base} → {out}（{dtype}）"),
    "wrote": ("Wrote {format} ({outtype}, {arch}) to {out}:", "已导出 {format}（{outtype}，{arch}）到 {out}："),
    "note": ("Note: {note}", "注意：{note}"),
    "ollama_command": ("Ollama: {command}", "Ollama 命令：{command}"),
    # the memory panel
    "est_gpu": (
        "≈ {need:.2f} GiB GPU memory{free} ({setup})",
        "≈ {need:.2f} GiB GPU 显存{free}（{setup}）",
    ),
    "est_gpu_free": ("; {free:.1f} GiB free on {name}", "；{name} 当前空闲 {free:.1f} GiB"),
    "est_cpu": (
        "≈ {need:.2f} GiB CPU memory (RSS){free} ({setup})",
        "≈ {need:.2f} GiB CPU 内存（RSS）{free}（{setup}）",
    ),
    "est_cpu_free": ("; {free:.1f} GiB RAM available", "；本机可用内存 {free:.1f} GiB"),
    "est_setup": (
        "{weights}, r={r}, batch {batch} x {length} tokens",
        "{weights}，r={r}，批大小 {batch} × {length} token",
    ),
    "est_sequences": (", {n} sequences per sample", "，每个样本 {n} 条序列"),
    "est_checkpointing": (", gradient checkpointing", "，梯度检查点"),
    "est_peak_gpu": ("peak allocated (max_memory_allocated)", "分配峰值（max_memory_allocated）"),
    "est_peak_cpu": ("peak (live memory)", "峰值（实际占用）"),
    "est_malloc": (
        "glibc malloc: activations, logits x{factor:g}",
        "glibc malloc：激活值与 logits ×{factor:g}",
    ),
    "est_total": ("total needed", "共需"),
    "est_cpu_note": (
        "Training runs on this CPU: the figure is the run's resident memory (RSS) above what the "
        "process holds when it starts, as the run's memory plan (memory_budget: auto) counts it "
        "against the available RAM.",
        "训练将在本机 CPU 上进行：此数值为训练进程在启动后额外占用的常驻内存（RSS），"
        "训练的内存规划（memory_budget: auto）用它与可用内存比较。",
    ),
    "est_too_big": (
        "More than is free: the run's memory plan tries gradient checkpointing and smaller "
        "micro-batches (same results), and stops before loading weights if nothing fits.",
        "超过当前可用量：训练的内存规划会尝试梯度检查点和更小的微批次（结果不变），都放不下时在加载权重前停止。",
    ),
}


def t(key: str, lang: str = "English", **fmt: object) -> str:
    en, zh = LABELS[key]
    text = zh if lang == ZH else en
    return text.format(**fmt) if fmt else text


STATES: dict[str, tuple[str, str]] = {
    "idle": ("idle", "空闲"),
    "starting": ("starting (loading model and data)", "启动中（加载模型和数据）"),
    "running": ("running", "训练中"),
    "stopping": ("stopping: saving a checkpoint", "正在停止：保存检查点"),
    "finished": ("finished", "已完成"),
    "stopped": ("stopped (checkpoint saved; Resume continues)", "已停止（检查点已保存，可继续训练）"),
    "failed": ("failed", "失败"),
}


def state_text(state: str, lang: str) -> str:
    en, zh = STATES.get(state, (state, state))
    return zh if lang == ZH else en


# --------------------------------------------------------------------------- training settings
SETTINGS: dict[str, tuple[str, str]] = {
    "method": (
        "训练方法",
        "`sft`（指令与回答）；`pt`（继续预训练：纯文本，每个 token 都学习）；`dpo`、`orpo`、`simpo`"
        "（偏好对：每个提示一个选中回答和一个拒绝回答）；`kto`（标注为好或不好的回答）。",
    ),
    "steps": ("训练步数", "优化器更新的步数（TrainingArguments.max_steps）。设置了 `epochs` 时为 None。"),
    "learning_rate": ("学习率", "优化器的峰值学习率。"),
    "batch_size": ("批大小", "每个设备每步的样本数（TrainingArguments.per_device_train_batch_size）。"),
    "r": ("LoRA 秩", "LoRA 的秩：更新量 B·A 的瓶颈维度。"),
    "alpha": ("LoRA 缩放系数", "LoRA 的 alpha；更新量按 alpha / r 缩放。"),
    "max_length": ("最大长度", "样本的最大 token 数；更长的样本会被丢弃并计数（绝不悄悄截断）。"),
    "eval_fraction": ("验证集比例", "留作评估的样本比例（0 表示不评估）。"),
    "template": (
        "提示模板",
        "提示格式：`chat`（分词器自带的对话模板）、`qa`（问/补充信息/答 纯文本；旧名 `seed` 仍可用）、"
        "ChatGLM 系列模板，或 `auto`（自动选择）。",
    ),
    "quantization": (
        "量化",
        "通过 bitsandbytes 以 `4bit`（NF4，即 QLoRA）或 `8bit` 加载基础模型权重（CUDA，或在 CPU 上以 fp32 计算）。",
    ),
    "dtype": ("计算精度", "计算数据类型：`auto` 在支持 bf16 的 GPU 上为 bf16，其他 GPU 上为 fp16，CPU 上为 fp32。"),
    "gradient_checkpointing": ("梯度检查点", "反向传播时重新计算激活值：更省内存，约慢 30%。"),
    "beta": (
        "偏好强度 beta",
        "偏好方法的参数：DPO 和 KTO 的 beta（越大越贴近参考模型）、ORPO 的几率比权重（lambda）、"
        "SimPO 的奖励缩放（论文用 2.0-2.5）。",
    ),
    "dropout": ("LoRA 丢弃率", "训练时对 LoRA 分支输入施加的 dropout（0 <= dropout < 1）。"),
    "data_format": (
        "数据格式",
        "`alpaca`（instruction/input/output）、`messages`（role/content）、`sharegpt`（from/value），"
        "或 `auto`（自动识别）。",
    ),
    "system_prompt": ("系统提示", "给没有系统提示的样本使用（None：使用模板自带的默认提示，如有）。"),
    "logging_steps": ("日志间隔步数", "每 N 步记录一次训练损失。"),
    "eval_steps": ("评估间隔步数", "每 N 步在留出集上评估一次（训练结束时也评估）。"),
    "save_steps": ("保存间隔步数", "每 N 步写入一个可续训的检查点。"),
    "warmup_ratio": ("预热比例", "学习率从 0 开始预热上升所占的步数比例。"),
    "lr_scheduler_type": ("学习率调度", "学习率调度方式：linear、cosine、constant、constant_with_warmup 等。"),
    "gradient_accumulation_steps": ("梯度累积步数", "每次优化器更新前累加的微批次数。"),
    "seed": ("随机种子", "用于数据划分、打乱顺序、LoRA 初始化和 dropout 的随机种子。"),
}
"""Chinese (name, help) of each setting; the label keeps the config key, which YAML files use."""


def setting_label(name: str, lang: str) -> str:
    return f"{SETTINGS[name][0]} ({name})" if lang == ZH and name in SETTINGS else name


def setting_info(name: str, lang: str) -> str:
    if lang == ZH and name in SETTINGS:
        return SETTINGS[name][1]
    from ..config import FIELD_DOCS

    return " ".join(FIELD_DOCS.get(name, "").split())


DATA_KINDS_ZH: dict[str, str] = {
    "instruction": "指令与回答",
    "text": "纯文本",
    "preference": "偏好对（选中 / 拒绝）",
    "kto": "标注好坏的回答（KTO）",
}
"""data.KIND_NAMES in Chinese."""

ANSWERS_ZH: dict[str, str] = {"chosen": "选中", "rejected": "拒绝", "desirable": "好", "undesirable": "不好"}
"""The answer of a pair or a KTO sample in the data check's sample titles."""


# --------------------------------------------------------------------------- tables
COLUMNS: dict[str, str] = {
    "metric": "指标",
    "adapter": "适配器",
    "base": "基础模型",
    "question": "问题",
    "reference": "参考答案",
    "prediction": "模型回答",
    "rouge-l": "ROUGE-L",
    "prompt": "提示",
    "chosen": "选中回答",
    "rejected": "拒绝回答",
    "margin": "差值（选中 − 拒绝）",
    "task": "任务",
    "n": "题数",
    "adapter - base": "适配器 − 基础模型",
}
"""Chinese headers of the Evaluate tab's tables (metric names in the rows stay as they are)."""


def columns(header: list[str], lang: str) -> list[str]:
    return [COLUMNS.get(h, h) if lang == ZH else h for h in header]


ESTIMATE_ROWS: dict[str, str] = {
    "weights": "权重",
    "LoRA (params + grads + optimizer)": "LoRA（参数 + 梯度 + 优化器状态）",
    "activations": "激活值",
    "logits and loss": "logits 与损失",
    "other": "其他",
    "CUDA context + allocator slack": "CUDA 上下文 + 分配器余量",
    "overhead": "额外开销",
}
"""The memory panel's row names (tools/estimate.py's `Estimate.rows`)."""

ESTIMATE_PHRASES: tuple[tuple[str, str], ...] = (
    ("NF4 linear weights + fp32 embeddings/norms", "NF4 线性层权重 + fp32 嵌入/归一化层"),
    ("int8 linear weights + fp32 embeddings/norms", "int8 线性层权重 + fp32 嵌入/归一化层"),
    (" weights", " 权重"),
    (" fp32 parameters", " 个 fp32 参数"),
    ("AdamW fp32 moments", "AdamW fp32 动量"),
    ("8-bit AdamW", "8 位 AdamW"),
    ("no optimizer state", "无优化器状态"),
    (" tokens/step", " token/步"),
    ("checkpointed", "梯度检查点"),
    ("fused (liger)", "融合计算（liger）"),
    ("tokens x vocab, fp32 loss copies", "token 数 × 词表大小，fp32 损失副本"),
    ("dequantisation buffer, misc", "反量化缓冲等"),
    ("misc", "杂项"),
    ("not in max_memory_allocated", "不计入 max_memory_allocated"),
    (", ", "，"),
)
"""Phrases of the rows' explanations, replaced in order."""


def estimate_row(name: str, why: str, lang: str) -> tuple[str, str]:
    if lang != ZH:
        return name, why
    for en, zh in ESTIMATE_PHRASES:
        why = why.replace(en, zh)
    return ESTIMATE_ROWS.get(name, name), why


# --------------------------------------------------------------------------- errors
E = TypeVar("E", bound=BaseException)


def bilingual(error: E, zh: str) -> E:
    """The web UI's own error with its Chinese text (shown in 中文 mode)."""
    error.zh_message = zh  # type: ignore[attr-defined]
    return error


def error_text(error: BaseException, lang: str) -> str:
    """A package error for the page: as it is in English; in 中文 mode its Chinese text when the
    web UI wrote one, else the English message, after the lead-in `出错：`."""
    if lang != ZH:
        return str(error)
    return t("error_lead", lang) + (getattr(error, "zh_message", None) or str(error))


WHAT: dict[str, str] = {
    "path": "路径",
    "name": "名称",
    "model folder": "模型文件夹",
    "data file": "数据文件",
    "adapter folder": "适配器文件夹",
    "run name": "运行名称",
    "run folder": "运行文件夹",
    "export name": "导出名称",
    "export folder": "导出文件夹",
    "data folder": "数据文件夹",
}
"""What a path from the page is, in paths.py's messages."""


def what_zh(what: str) -> str:
    return WHAT.get(what, what)


SAME_IN_BOTH = frozenset({"top_p", "chat_a", "chat_b", "rouge-l"})
"""Keys whose Chinese text is the English one by nature (a parameter's own name, a letter)."""

CJK = re.compile(r"[\u4e00-\u9fff]")


__all__ = [
    "ANSWERS_ZH",
    "CJK",
    "DATA_KINDS_ZH",
    "COLUMNS",
    "ESTIMATE_ROWS",
    "LABELS",
    "LANGS",
    "SAME_IN_BOTH",
    "SETTINGS",
    "STATES",
    "WHAT",
    "ZH",
    "bilingual",
    "columns",
    "error_text",
    "estimate_row",
    "setting_info",
    "setting_label",
    "state_text",
    "t",
    "what_zh",
]
