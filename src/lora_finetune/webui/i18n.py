"""Every label on the page in English and 中文; `t(key, lang)` picks one.

Setting help (the `info` under each field) comes from the config's own field docs
(config.FIELD_DOCS), which are written in English; the labels around them switch language.
"""

from __future__ import annotations

LANGS = ("English", "中文")

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
    "prompt": ("prompt", "提示"),
    "run_name": ("Run name (folder under outputs/)", "运行名称（outputs/ 下的文件夹名）"),
    "settings": ("Settings", "训练参数"),
    "more_settings": ("More settings", "更多参数"),
    "estimate": ("Memory estimate (GPU, from config.json)", "显存估算（GPU，依据 config.json）"),
    "start": ("Start", "开始训练"),
    "stop": ("Stop (save a checkpoint)", "停止（保存检查点）"),
    "resume": ("Resume", "继续训练"),
    "overwrite": ("Replace an existing run of this name", "覆盖同名的已有运行"),
    "status": ("Status", "状态"),
    "progress": ("Progress", "进度"),
    "loss_curve": ("Loss", "损失曲线"),
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
    "max_new_tokens": ("max_new_tokens", "最大生成长度"),
    "temperature": ("temperature (0: greedy)", "温度（0 为贪心解码）"),
    "top_p": ("top_p", "top_p"),
    "repetition_penalty": ("repetition_penalty", "重复惩罚"),
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
    "worst": ("Worst samples (lowest ROUGE-L)", "最差样本（ROUGE-L 最低）"),
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
}


def t(key: str, lang: str = "English") -> str:
    en, zh = LABELS[key]
    return zh if lang == "中文" else en


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
    return zh if lang == "中文" else en


__all__ = ["LABELS", "LANGS", "STATES", "state_text", "t"]
