"""The Evaluate, Export and Chat tabs' actions on a trained tiny adapter (the browser test covers
Train and Chat in the page), and how errors reach the page: as words, never a traceback."""

from __future__ import annotations

import re
import shutil

import pytest

from lora_finetune.errors import ConfigError, DataError, LoraFinetuneError

from webui_support import ROWS, write_jsonl


@pytest.fixture(scope="module")
def ui(adapter, tmp_path_factory):
    from lora_finetune.webui.actions import WebUI
    from lora_finetune.webui.paths import Workdir

    wd = Workdir.create(tmp_path_factory.mktemp("webui-actions"))
    shutil.copytree(adapter, wd.outputs / "ad")
    write_jsonl(wd.data / "test.jsonl", ROWS[:3])
    return WebUI(wd)


def test_lists_finished_adapters_only(ui):
    (ui.wd.outputs / ".half.partial").mkdir()
    (ui.wd.outputs / "not-finished").mkdir()
    assert ui.adapters() == ["outputs/ad"]
    assert ("ad: base model", "base:outputs/ad") in ui.model_choices()


def test_evaluate_table_and_worst_samples(ui):
    table, worst, report = ui.evaluate("outputs/ad", "data/test.jsonl", max_new_tokens=8, compare_base=True)
    assert table[0] == ["metric", "adapter", "base"]
    assert "loss" in [row[0] for row in table]
    assert worst[0] == ["question", "reference", "prediction", "rouge-l"]
    assert len(worst) == 4 and all(len(r) == 4 for r in worst)
    assert report.is_file() and ui.wd.root in report.parents
    with pytest.raises(DataError):
        write_jsonl(ui.wd.data / "noanswer.jsonl", [{"instruction": "q"}])
        ui.evaluate("outputs/ad", "data/noanswer.jsonl")
    with pytest.raises(ConfigError, match="outside the workdir"):
        ui.evaluate("../../", "data/test.jsonl")


def test_evaluate_scores_preference_pairs(ui):
    """A file of pairs on the Evaluate tab: preference accuracy and margin, adapter and base; the
    worst are the pairs whose chosen answer the adapter prefers least, smallest margin first."""
    from lora_finetune.data import demo_rows

    rows = demo_rows("preference")[:4]
    pairs = [{"prompt": r["instruction"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    write_jsonl(ui.wd.data / "pairs.jsonl", pairs)
    table, worst, report = ui.evaluate("outputs/ad", "data/pairs.jsonl", compare_base=True, worst=3)
    assert table[0] == ["metric", "adapter", "base"]
    acc = next(row for row in table if row[0] == "preference_accuracy")
    assert all(0.0 <= v <= 1.0 for v in acc[1:])
    assert worst[0] == ["prompt", "chosen", "rejected", "margin"] and len(worst) == 4
    margins = [r[3] for r in worst[1:]]
    assert margins == sorted(margins) and worst[1][1] in {p["chosen"] for p in pairs}
    assert report.is_file()


def test_benchmark_table(ui):
    pytest.importorskip("lm_eval")
    table, report = ui.benchmark("outputs/ad", "lora_demo_zh", limit=2, compare_base=True)
    assert table[0] == ["task", "metric", "n", "adapter", "base", "adapter - base"]
    assert [r[0] for r in table[1:]] == ["lora_demo_zh", "  lora_demo_zh_knowledge", "  lora_demo_zh_language"]
    assert table[1][2] == "4" and "±" in table[1][3] and (ui.wd.root / report).is_file()
    with pytest.raises(ConfigError, match="did you mean"):
        ui.benchmark("outputs/ad", "lora_demo_zhh")
    with pytest.raises(ConfigError, match="outside the workdir"):
        ui.benchmark("../../", "lora_demo_zh")


def test_chat_streams_pieces(ui):
    from lora_finetune.use.chat import GenerationSettings

    texts = list(ui.chat("adapter:outputs/ad", [], "中国的首都是哪里？", GenerationSettings(16, 1.0, 0.9, 1.0)))
    assert len(texts) >= 2 and texts[-1].startswith(texts[0][:1])
    with pytest.raises(ConfigError, match="empty"):
        list(ui.chat("adapter:outputs/ad", [], "  ", GenerationSettings()))
    with pytest.raises(LoraFinetuneError, match="temperature"):
        list(ui.chat("adapter:outputs/ad", [], "hi", GenerationSettings(16, -1.0)))


def test_merge_and_gguf_export_into_exports(ui):
    text = ui.export("outputs/ad", "merge", "merged")
    assert (ui.wd.exports / "merged" / "config.json").is_file() and "Merged" in text
    text = ui.export("outputs/ad", "gguf", "ad-gguf", outtype="f16")
    assert any(p.suffix == ".gguf" for p in (ui.wd.exports / "ad-gguf").iterdir()), text
    with pytest.raises(ConfigError, match="exists|--overwrite"):
        ui.export("outputs/ad", "merge", "merged")
    with pytest.raises(ConfigError, match="plain name"):
        ui.export("outputs/ad", "merge", "../../x")


def test_errors_become_page_messages_without_traceback():
    import gradio as gr

    from lora_finetune.webui.app import friendly

    @friendly
    def refuses():
        raise ConfigError("output_dir <b>x</b> exists.\nPass --overwrite.")

    @friendly
    def breaks():
        raise ZeroDivisionError("division by zero")

    @friendly
    def streams():
        yield 1
        raise DataError("bad row 3")

    with pytest.raises(gr.Error) as e:
        refuses()
    assert e.value.message == "output_dir &lt;b&gt;x&lt;/b&gt; exists.<br>Pass --overwrite."
    with pytest.raises(gr.Error) as e:
        breaks()
    assert "Unexpected error (ZeroDivisionError: division by zero)" in e.value.message
    assert "Traceback" not in e.value.message
    with pytest.raises(gr.Error, match="bad row 3"):
        list(streams())


def test_progress_reads_the_preference_metrics():
    from lora_finetune.webui.jobs import parse_log

    log = (
        "[lora-finetune] step 1/4  loss 0.6931  lr 1.0e-02  grad 0.8  reward acc 0.00  margin 0.000  |  0.04 s/step\n"
        "[lora-finetune] step 2/4  eval loss 0.6251  reward acc 1.00  margin 0.153\n"
        "[lora-finetune] step 3/4  loss 0.5000  lr 5.0e-03  |  0.04 s/step, ~0s left\n"
    )
    prog = parse_log(log)
    assert prog.rewards == {"train": [(1, 0.0, 0.0)], "eval": [(2, 1.0, 0.153)]}
    assert prog.train == [(1, 0.6931), (3, 0.5)] and prog.eval == [(2, 0.6251)]


def test_data_preview_of_the_method_demo_pairs(webui_workdir):
    from lora_finetune.webui.actions import WebUI
    from lora_finetune.webui.paths import Workdir

    ui = WebUI(Workdir(webui_workdir))
    prev = ui.data_preview("models/tiny", None, method="dpo", n=1)
    assert "30 records of preference pairs (chosen / rejected) (method dpo / orpo / simpo)" in prev.stats
    titles = [text for text, label in prev.samples if text.startswith("──")]
    assert titles == ["── sample 1 (chosen) ──\n", "── sample 1 (rejected) ──\n"]
    learned = [text for text, label in prev.samples if label == "learned"]
    assert any("中国的首都是北京。" in t for t in learned) and any(t.startswith("北京。") for t in learned)
    # 中文 mode: the page's own words, the sample titles and the highlight's category
    zh = ui.data_preview("models/tiny", None, method="dpo", n=1, lang="中文")
    assert zh.stats.startswith("内置示例数据：30 条偏好对（选中 / 拒绝）（训练方法 dpo / orpo / simpo），模板 `")
    assert "\n保留 30/30 条样本；学习 " in zh.stats
    assert [text for text, _ in zh.samples if text.startswith("──")] == [
        "── 样本 1（选中） ──\n",
        "── 样本 1（拒绝） ──\n",
    ]
    assert {label for _, label in zh.samples} == {None, "学习"}


# --------------------------------------------------------------------------- the memory panel
SETTINGS = {"method": "sft", "batch_size": 2, "max_length": 256, "r": 8, "quantization": "none", "dtype": "auto"}


def _planned(ui, settings: dict) -> float:
    """What training's memory planning estimates for the same settings (samples as long as
    max_length, a budget that fits as asked)."""
    from dataclasses import replace

    import torch

    from lora_finetune.config import LoRAFinetuneConfig
    from lora_finetune.models.loading import pick_dtype
    from lora_finetune.tools.estimate import load_shape, resolve_targets
    from lora_finetune.training.planning import plan_memory

    path = str(ui.wd.root / "models" / "tiny")
    cfg = replace(LoRAFinetuneConfig(), memory_budget="1000GB", **settings)
    targets = resolve_targets(load_shape(path), "auto")
    assert not torch.cuda.is_available()  # the planner's device, as the page sees it
    return plan_memory(cfg, path, targets, settings["max_length"], pick_dtype(settings["dtype"])).estimate


def test_memory_panel_on_a_cpu_is_the_runs_rss(webui_workdir, monkeypatch):
    """Without CUDA the panel estimates what the run's memory planning counts on a CPU: RSS, with
    glibc's malloc factor where the run will not have tcmalloc, against the RAM available."""
    import torch

    from lora_finetune.allocator import ALLOCATOR_ENV, GLIBC_RSS_FACTOR, find_tcmalloc
    from lora_finetune.tools.estimate import GiB
    from lora_finetune.webui.actions import WebUI, run_rss_factor
    from lora_finetune.webui.paths import Workdir

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ui = WebUI(Workdir(webui_workdir))
    # the training process keeps glibc's malloc: the planner and the panel scale by its factor
    monkeypatch.setenv(ALLOCATOR_ENV, "system")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    for settings in (SETTINGS, {**SETTINGS, "method": "dpo", "gradient_checkpointing": True}):
        m = ui.memory_estimate("models/tiny", settings)
        assert m.device == "cpu" and m.estimate.setup.dtype == "fp32"  # dtype auto on a CPU
        assert m.rss_factor == GLIBC_RSS_FACTOR
        assert m.needed == pytest.approx(_planned(ui, settings), rel=1e-9)
        assert m.available and m.available > 0
    text = ui.estimate("models/tiny", SETTINGS)
    head = text.splitlines()[0]
    want = r"≈ [0-9.]+ GiB CPU memory \(RSS\); [0-9.]+ GiB RAM available \(fp32, r=8, batch 2 x 256 tokens\)"
    assert re.fullmatch(want, head), head
    assert f"glibc malloc: activations, logits x{GLIBC_RSS_FACTOR:g}" in text
    assert "GPU" not in text and "CUDA" not in text
    zh = ui.estimate("models/tiny", SETTINGS, lang="中文")
    assert "CPU 内存（RSS）" in zh and "本机可用内存" in zh and "GPU" not in zh
    # where tcmalloc is installed, `lora-finetune train` preloads it: live memory, factor 1
    monkeypatch.setenv(ALLOCATOR_ENV, "auto")
    assert run_rss_factor() == (1.0 if find_tcmalloc() else GLIBC_RSS_FACTOR)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert run_rss_factor() == 1.0
    # more than the RAM there is: the panel says what training's planning will do
    monkeypatch.setattr("lora_finetune.tools.estimate.free_memory", lambda on_gpu: 0.001 * GiB)
    assert "memory plan tries gradient checkpointing" in ui.estimate("models/tiny", SETTINGS)


def test_memory_panel_on_cuda_is_gpu_memory(webui_workdir, monkeypatch):
    import torch

    from lora_finetune.tools.estimate import GiB
    from lora_finetune.webui.actions import WebUI
    from lora_finetune.webui.paths import Workdir

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (40 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")
    ui = WebUI(Workdir(webui_workdir))
    m = ui.memory_estimate("models/tiny", SETTINGS)
    assert m.device == "cuda" and m.estimate.setup.dtype == "bf16" and m.rss_factor == 1.0
    assert m.needed == m.estimate.total and m.estimate.overhead > 0.5 * GiB  # CUDA context counted
    text = ui.estimate("models/tiny", SETTINGS)
    assert text.startswith("≈ ") and "GiB GPU memory; 40.0 GiB free on Test GPU (bf16, r=8" in text
    assert "CUDA context" in text and "RSS" not in text and "RAM" not in text
    assert "GPU 显存；Test GPU 当前空闲 40.0 GiB" in ui.estimate("models/tiny", SETTINGS, lang="中文")


def test_page_texts_in_chinese(ui):
    """What the actions write for the page, in 中文 mode."""
    assert ("ad：基础模型", "base:outputs/ad") in ui.model_choices("中文")
    text = ui.export("outputs/ad", "merge", "merged-zh", lang="中文")
    assert text.startswith("已把 outputs/ad 合并进 ") and (ui.wd.exports / "merged-zh" / "config.json").is_file()
