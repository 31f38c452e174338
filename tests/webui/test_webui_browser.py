"""The web UI in a real browser (headless Chromium driven by Playwright).

One page, used the way a person would: upload data and see the data check, train 3 steps and
watch progress and the loss curve, chat with the result (streamed), evaluate it (instruction data
and preference pairs), export it (merged and GGUF), stop / reopen / resume a run, switch the
language (中文 everywhere), and the errors a hostile or careless user causes. Screenshots go to
docs/ (docs/webui.md and the README show them) when LORA_FINETUNE_SCREENSHOTS=1.

Needs Debian's `chromium` (`apt-get install -y chromium`; `make test` installs it when run as
root) and `pip install playwright` (no browser download: the system Chromium is used).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from webui_support import write_jsonl

ON_GPU = pytest.importorskip("torch").cuda.is_available()
"""Where the page's runs train: the memory panel speaks of GPU memory there, of RSS on a CPU."""

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (uses the system Chromium)")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="headless Chromium not found: `apt-get install -y chromium` (as root; `make test` does it)",
    ),
]
# The screenshots of docs/webui.md and the README: refreshed with `LORA_FINETUNE_SCREENSHOTS=1`
# (so that an ordinary test run leaves the checkout clean); otherwise they go to a scratch folder.
DOCS = (
    Path(__file__).resolve().parents[2] / "docs"
    if os.environ.get("LORA_FINETUNE_SCREENSHOTS")
    else Path(tempfile.gettempdir()) / "lora-finetune-webui-screenshots"
)
expect = playwright_api.expect


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, webui_server):
    url, _ = webui_server
    pg = browser.new_page(viewport={"width": 1280, "height": 1600})
    pg.set_default_timeout(30_000)
    pg.goto(url)
    pg.wait_for_selector("#model textarea")
    yield pg
    pg.close()


# --------------------------------------------------------------------------- helpers
def text_in(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.press("Tab")


def number_in(page, name: str, value) -> None:
    box = page.locator(f"#set-{name} input").first
    box.fill(str(value))
    box.press("Tab")


def value_of(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def state(page) -> dict:
    el = page.locator("#train-progress-state")
    return {k: el.get_attribute(f"data-{k}") for k in ("state", "step", "total")}


def wait_state(page, states: set[str], timeout: float = 240, min_step: int = 0) -> dict:
    deadline = time.time() + timeout
    seen = {}
    while time.time() < deadline:
        seen = state(page)
        if seen["state"] in states and int(seen["step"] or 0) >= min_step:
            return seen
        time.sleep(0.5)
    raise AssertionError(f"training state {seen} never reached {states} (step >= {min_step}); log:\n{log_of(page)}")


def log_of(page) -> str:
    try:
        return value_of(page, "train-log")
    except Exception:  # noqa: BLE001 (only for the failure message)
        return "?"


def expect_error(page, pattern: str) -> None:
    """A readable error on the page (Gradio's error pop-up), never a traceback."""
    toast = page.locator(".toast-wrap").filter(has_text=re.compile(pattern))
    expect(toast.first).to_be_visible(timeout=30_000)
    assert "Traceback" not in toast.first.inner_text()
    for close in page.locator(".toast-close").all():
        try:
            close.click(timeout=2000)
        except Exception:  # noqa: BLE001 (already gone)
            pass


def pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.locator("ul[role=listbox] li").filter(has_text=option).first.click()


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def train_settings(page, name: str, steps: int) -> None:
    text_in(page, "model", "models/tiny")
    text_in(page, "run-name", name)
    for key, value in dict(steps=steps, batch_size=2, r=4, alpha=8, max_length=256, learning_rate=0.02).items():
        number_in(page, key, value)
    if not page.locator("#set-logging_steps input").first.is_visible():
        page.get_by_text("More settings").click()
    for key, value in dict(logging_steps=1, eval_steps=2, save_steps=2, dropout=0).items():
        number_in(page, key, value)


# --------------------------------------------------------------------------- the flow
def test_upload_check_and_train(page, webui_workdir, tmp_path):
    """Upload -> data check with learned tokens marked -> 3 steps -> progress at the end, loss curve."""
    train_settings(page, "first", 3)
    data = write_jsonl(tmp_path / "qa pairs.jsonl")
    page.locator("#upload input[type=file]").set_input_files(str(data))
    expect(page.locator("#data-path textarea")).to_have_value("data/qa_pairs.jsonl", timeout=30_000)
    assert (webui_workdir / "data" / "qa_pairs.jsonl").read_bytes() == data.read_bytes()
    expect(page.locator("#data-stats textarea")).to_have_value(re.compile(r"8 records"), timeout=60_000)
    assert "of 8 samples kept" in value_of(page, "data-stats")
    # the answer tokens are marked as learned, the prompt is not
    learned = page.locator("#samples").get_by_text("北京。")
    expect(learned.first).to_be_visible()
    expect(page.locator("#samples")).to_contain_text("中国的首都是哪里？")
    # the estimate follows the settings, for the device the run will use
    expect(page.locator("#estimate textarea")).to_have_value(re.compile(r"GiB"), timeout=60_000)
    if ON_GPU:
        expect(page.locator("#estimate textarea")).to_have_value(re.compile(r"^≈ [0-9.]+ GiB GPU memory"))
    else:  # this machine: the run's resident memory against the RAM, no word of a GPU
        expect(page.locator("#estimate")).to_contain_text("Memory estimate (CPU memory as RSS")
        head = re.compile(r"^≈ [0-9.]+ GiB CPU memory \(RSS\); [0-9.]+ GiB RAM available \(fp32, r=4")
        expect(page.locator("#estimate textarea")).to_have_value(head)
        assert "GPU" not in value_of(page, "estimate")
    before = value_of(page, "estimate")
    number_in(page, "batch_size", 64)
    expect(page.locator("#estimate textarea")).not_to_have_value(before, timeout=30_000)
    number_in(page, "batch_size", 2)

    page.locator("#start").click()
    expect(page.locator("#train-status textarea")).to_have_value(re.compile("outputs/first"), timeout=30_000)
    done = wait_state(page, {"finished", "failed"})
    assert done["state"] == "finished", log_of(page)
    assert done["step"] == done["total"] == "3"
    expect(page.locator("#train-status textarea")).to_have_value(re.compile(r"Done"), timeout=10_000)
    expect(page.locator("#loss-plot canvas, #loss-plot svg.marks").first).to_be_visible(timeout=30_000)
    assert (webui_workdir / "outputs" / "first" / "adapter_model.safetensors").is_file()
    DOCS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS / "webui-train.png"), full_page=True)


def test_chat_streams_side_by_side(page):
    tab(page, "Chat")
    page.locator("#refresh-models").click()
    pick(page, "model-a", "first")
    pick(page, "model-b", "first: base model")
    page.get_by_text("Generation settings").click()
    # a 3-step adapter on a random tiny model says nothing readable greedily: sample instead
    page.locator("#gen-temperature input[type=number]").fill("1")
    page.locator("#gen-temperature input[type=number]").press("Tab")
    page.locator("#gen-max_new_tokens input[type=number]").fill("48")
    page.locator("#gen-max_new_tokens input[type=number]").press("Tab")
    # count the distinct texts the answer goes through: more than one = it streamed
    page.evaluate(
        """() => {
        window.__seen = new Set();
        const target = document.querySelector('#chat-a');
        new MutationObserver(() => {
          const bots = target.querySelectorAll('[data-testid="bot"]');
          if (bots.length) window.__seen.add(bots[bots.length - 1].innerText);
        }).observe(target, {subtree: true, childList: true, characterData: true});
    }"""
    )
    # Sampling a 3-step tiny model sometimes yields only special tokens (the page then says so):
    # ask again, a few times at most, and check the first answer with text streamed.
    for attempt in range(4):
        page.evaluate("() => window.__seen.clear()")
        text_in(page, "message", "中国的首都是哪里？")
        page.locator("#send").click()
        expect(page.locator("#chat-a [data-testid=user]").nth(attempt)).to_contain_text("中国的首都是哪里？")
        expect(page.locator("#chat-b [data-testid=bot]").nth(attempt)).to_have_text(re.compile(r"\S"), timeout=120_000)
        answer = page.locator("#chat-a [data-testid=bot]").nth(attempt).inner_text()
        assert answer.strip(), "the adapter answered nothing"
        if not answer.startswith("(no text"):
            break
    else:
        pytest.fail("four sampled answers in a row held only special tokens")
    seen = page.evaluate("() => Array.from(window.__seen).filter(t => t.trim().length)")
    assert len(seen) > 1, f"the answer arrived in one piece, not streamed: {seen}"
    page.screenshot(path=str(DOCS / "webui-chat.png"), full_page=True)


def test_benchmark_on_the_evaluate_tab(page):
    """The bundled benchmark task, adapter against base, as a table on the page."""
    pytest.importorskip("lm_eval")
    tab(page, "Evaluate")
    pick(page, "eval-adapter", "first")
    page.get_by_text("Standard benchmarks").click()
    page.locator("#bench input[type=number]").first.fill("2")  # 2 items per task
    page.locator("#bench input[type=number]").first.press("Tab")
    page.locator("#run-bench").click()
    table = page.locator("#bench-table")
    expect(table).to_contain_text("lora_demo_zh_language", timeout=120_000)
    expect(table).to_contain_text("adapter - base")
    expect(table).to_contain_text("±")
    expect(page.locator("#bench-report textarea")).to_have_value(re.compile(r"bench/first\.json$"))


def test_evaluate_tab(page, webui_workdir):
    """The adapter trained above on a data file: the metrics table (adapter and base, with the
    loss) and the worst samples; then a file of preference pairs: accuracy and margins."""
    tab(page, "Evaluate")
    pick(page, "eval-adapter", "first")
    text_in(page, "eval-data", "data/qa_pairs.jsonl")
    number = page.locator("#eval-max-new input[type=number], #eval-max-new input").first
    number.fill("8")
    number.press("Tab")
    page.locator("#eval-base input[type=checkbox]").check()
    page.locator("#run-eval").click()
    report = page.locator("#eval-report textarea")
    expect(report).to_have_value(".webui/eval/first-qa_pairs.json", timeout=180_000)
    assert (webui_workdir / ".webui" / "eval" / "first-qa_pairs.json").is_file()
    metrics = page.locator("#eval-metrics")
    for text in ("metric", "adapter", "base", "loss", "rouge-l"):
        expect(metrics).to_contain_text(text)
    worst = page.locator("#eval-worst")
    for text in ("question", "reference", "prediction", "rouge-l"):
        expect(worst).to_contain_text(text)
    expect(worst).to_contain_text(
        re.compile("中国的首都是哪里？|一周有几天？|What is 2 \\+ 2\\?|Capital of France\\?|Name a")
    )
    page.screenshot(path=str(DOCS / "webui-eval.png"), full_page=True)

    # preference pairs in the same box: scored as pairs
    from lora_finetune.data import demo_rows

    rows = demo_rows("preference")[:3]
    pairs = [{"prompt": r["instruction"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    write_jsonl(webui_workdir / "data" / "pairs.jsonl", pairs)
    text_in(page, "eval-data", "data/pairs.jsonl")
    page.locator("#run-eval").click()
    expect(report).to_have_value(".webui/eval/first-pairs.json", timeout=120_000)
    expect(metrics).to_contain_text("preference_accuracy")
    for text in ("prompt", "chosen", "rejected", "margin"):
        expect(worst).to_contain_text(text)
    expect(worst).to_contain_text(pairs[0]["chosen"][:6])


def test_export_tab(page, webui_workdir):
    """Merge into exports/NAME, then a GGUF file: the result says where, the files are there."""
    tab(page, "Export")
    pick(page, "export-adapter", "first")
    expect(page.get_by_label("merge: the adapter merged into the base (safetensors)")).to_be_checked()
    text_in(page, "export-name", "first-merged")
    page.locator("#run-export").click()
    result = page.locator("#export-result textarea")
    expect(result).to_have_value(re.compile(r"^Merged outputs/first into .* -> .*first-merged"), timeout=180_000)
    merged = webui_workdir / "exports" / "first-merged"
    assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors"))

    page.get_by_label("gguf: the merged model as one GGUF file").check()
    text_in(page, "export-name", "first-gguf")
    page.locator("#run-export").click()
    expect(result).to_have_value(re.compile(r"^Wrote gguf \(f16, .*first-gguf"), timeout=180_000)
    ggufs = list((webui_workdir / "exports" / "first-gguf").glob("*.gguf"))
    assert ggufs and ggufs[0].stat().st_size > 0
    assert ggufs[0].name in value_of(page, "export-result")
    page.screenshot(path=str(DOCS / "webui-export.png"), full_page=True)
    # the same name again without "replace": the package's refusal, as a message
    page.locator("#run-export").click()
    expect_error(page, "exists|--overwrite")


def test_errors_are_messages(page, webui_workdir, tmp_path):
    """Hostile input gets a sentence, not a traceback."""
    tab(page, "Train")
    # 1. a data path out of the workdir
    text_in(page, "data-path", "../../../etc/passwd")
    page.locator("#check-data").click()
    expect_error(page, "leads outside the workdir")
    # 2. a symlink inside the workdir pointing out of it
    (webui_workdir / "data" / "sneaky.jsonl").symlink_to("/etc/hostname")
    text_in(page, "data-path", "data/sneaky.jsonl")
    page.locator("#check-data").click()
    expect_error(page, "leads outside the workdir")
    # 3. an empty upload
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    page.locator("#upload input[type=file]").set_input_files(str(empty))
    expect_error(page, "is empty")
    # 4. a run name that is a path
    text_in(page, "data-path", "")
    text_in(page, "run-name", "../../escape")
    page.locator("#start").click()
    expect_error(page, "not a plain name")
    assert not (webui_workdir.parent / "escape").exists()
    # 5. Stop with nothing running
    text_in(page, "run-name", "nothing-here")
    page.locator("#stop").click()
    expect_error(page, "Nothing is training")
    # 6. a setting the config refuses: the config's own message
    text_in(page, "run-name", "bad-settings")
    number_in(page, "r", 0)
    page.locator("#start").click()
    expect_error(page, "the LoRA rank must be a positive integer")
    number_in(page, "r", 4)


def test_two_starts_close_tab_stop_and_resume(page, browser, webui_server, webui_workdir):
    """A long run: a second Start on the same output gets the lock's message; the tab closes
    and reopens mid-run; Stop saves a checkpoint; Resume continues from it."""
    url, ui = webui_server
    tab(page, "Train")
    train_settings(page, "long", 100000)
    number_in(page, "save_steps", 1)
    text_in(page, "data-path", "data/qa_pairs.jsonl")
    page.locator("#start").click()
    wait_state(page, {"running"}, min_step=1)
    # a second writer of the same output folder: the lock's own message, the first run goes on
    page.locator("#start").click()
    expect(page.locator("#train-status textarea")).to_have_value(
        re.compile("being written by another process"), timeout=120_000
    )
    assert state(page)["state"] == "running"

    # close the tab mid-training; a new one shows the same run still going
    page.close()
    time.sleep(2)
    page2 = browser.new_page(viewport={"width": 1280, "height": 1600})
    page2.set_default_timeout(30_000)
    page2.goto(url)
    expect(page2.locator("#run-name textarea")).to_have_value("long")  # the run started last
    before = int(wait_state(page2, {"running"}, min_step=1)["step"])
    wait_state(page2, {"running"}, min_step=before + 1)

    page2.locator("#stop").click()
    stopped = wait_state(page2, {"stopped", "failed", "finished"}, timeout=120)
    assert stopped["state"] == "stopped", log_of(page2)
    expect(page2.locator("#train-status textarea")).to_have_value(re.compile(r"interrupted at step"), timeout=10_000)
    checkpoints = list((webui_workdir / "outputs" / ".long.partial" / "checkpoints").glob("checkpoint-*/COMPLETE"))
    assert checkpoints, "Stop saved no checkpoint"
    at = int(stopped["step"])

    # Resume: the same settings, continued from the checkpoint (not from step 0)
    train_settings(page2, "long", 100000)
    number_in(page2, "save_steps", 1)
    text_in(page2, "data-path", "data/qa_pairs.jsonl")
    page2.locator("#resume").click()
    wait_state(page2, {"running"}, min_step=at + 1, timeout=240)
    assert "resuming from" in ui.jobs.latest("long").read_log()
    page2.locator("#stop").click()
    assert wait_state(page2, {"stopped", "failed"}, timeout=120)["state"] == "stopped"
    page2.close()


def test_language_switch(browser, webui_server):
    """中文: tabs, buttons, setting names and their help, the memory panel, the data check, an
    error, and the Evaluate and Export tabs; then English again."""
    url, _ = webui_server
    pg = browser.new_page(viewport={"width": 1280, "height": 1000})
    pg.set_default_timeout(30_000)
    pg.goto(url)
    pg.wait_for_selector("#model textarea")
    text_in(pg, "model", "models/tiny")
    pg.get_by_label("中文").check()
    expect(pg.get_by_role("tab", name="训练")).to_be_visible(timeout=30_000)
    expect(pg.get_by_role("tab", name="对话")).to_be_visible()
    expect(pg.locator("#start")).to_have_text("开始训练")
    # settings: a Chinese name with the config key, the help in Chinese
    expect(pg.locator("#set-learning_rate")).to_contain_text("学习率 (learning_rate)")
    expect(pg.locator("#set-learning_rate")).to_contain_text("优化器的峰值学习率。")
    expect(pg.locator("#set-method")).to_contain_text("训练方法 (method)")
    expect(pg.locator("#set-gradient_checkpointing")).to_contain_text("反向传播时重新计算激活值")
    expect(pg.locator("#set-learning_rate")).not_to_contain_text("Peak learning rate")
    # the memory panel, recomputed in Chinese
    panel = re.compile(r"^≈ [0-9.]+ GiB GPU 显存" if ON_GPU else r"^≈ [0-9.]+ GiB CPU 内存（RSS）；本机可用内存")
    expect(pg.locator("#estimate textarea")).to_have_value(panel, timeout=60_000)
    if not ON_GPU:
        expect(pg.locator("#estimate")).to_contain_text("内存估算（CPU 内存，即 RSS")
    pg.evaluate("window.scrollTo(0, 0)")
    pg.screenshot(path=str(DOCS / "webui-zh.png"))  # (CJK glyphs need a font: fonts-noto-cjk)
    # the page's messages: the data check, and an error with the Chinese lead-in
    text_in(pg, "data-path", "")
    pg.locator("#check-data").click()
    expect(pg.locator("#data-stats textarea")).to_have_value(
        re.compile(r"^内置示例数据：20 条指令与回答"), timeout=60_000
    )
    expect(pg.locator("#data-stats textarea")).to_have_value(re.compile(r"保留 20/20 条样本"))
    expect(pg.locator("#samples")).to_contain_text("样本 1")
    text_in(pg, "run-name", "nothing-zh")
    pg.locator("#stop").click()
    expect_error(pg, "出错：没有名为 'nothing-zh' 的训练在运行")
    # Evaluate and Export
    tab(pg, "评估")
    expect(pg.locator("#run-eval")).to_have_text("开始评估")
    for text in ("适配器", "评估数据（工作目录内路径）", "最多样本数（0 为全部）", "同时评估基础模型", "标准评测基准"):
        expect(pg.locator("#tab-eval")).to_contain_text(text)
    expect(pg.locator("#tab-eval")).not_to_contain_text("Evaluation data")
    tab(pg, "导出")
    expect(pg.locator("#run-export")).to_have_text("开始导出")
    for text in (
        "导出内容",
        "merge：把适配器合并进基础模型（safetensors）",
        "gguf：合并后的模型",
        "输出名称",
        "GGUF 数值格式",
    ):
        expect(pg.locator("#tab-export")).to_contain_text(text)
    expect(pg.get_by_label("merge：把适配器合并进基础模型（safetensors）")).to_be_checked()  # relabelled, still chosen
    pg.get_by_label("English").check()
    expect(pg.get_by_role("tab", name="Train")).to_be_visible(timeout=30_000)
    expect(pg.locator("#run-export")).to_have_text("Export")
    tab(pg, "Train")
    expect(pg.locator("#set-learning_rate")).to_contain_text("Peak learning rate")
    expect(pg.locator("#estimate textarea")).to_have_value(re.compile(r"GiB (GPU|CPU) memory"), timeout=60_000)
    pg.close()


def test_dpo_from_the_method_selector(browser, webui_server):
    """Pick method dpo: the data check shows the demo pairs with both answers, training reports
    the reward accuracy and margin on the Train tab. (A page of its own: the module's page is
    closed by the close-the-tab test.)"""
    url, _ = webui_server
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.set_default_timeout(30_000)
    page.goto(url)
    page.wait_for_selector("#model textarea")
    tab(page, "Train")
    train_settings(page, "dpo-run", 3)
    text_in(page, "data-path", "")
    pick(page, "set-method", "dpo")
    page.locator("#check-data").click()
    expect(page.locator("#data-stats textarea")).to_have_value(re.compile(r"preference pairs"), timeout=60_000)
    expect(page.locator("#samples")).to_contain_text("sample 1 (chosen)")
    expect(page.locator("#samples")).to_contain_text("sample 1 (rejected)")
    page.locator("#start").click()
    done = wait_state(page, {"finished", "failed"})
    assert done["state"] == "finished", log_of(page)
    expect(page.locator("#train-rewards")).to_contain_text(re.compile(r"train reward acc [0-9.]+, margin"))
    expect(page.locator("#train-rewards")).to_contain_text("held-out reward acc")
    pick(page, "set-method", "sft")
    page.close()
