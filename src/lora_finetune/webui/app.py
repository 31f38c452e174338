"""The page: Gradio Blocks with Train, Chat, Evaluate and Export tabs and a language switch.

Every handler calls `actions.WebUI` (the package functions the CLI calls); a `LoraFinetuneError`
becomes a readable `gr.Error` (or the status box, for a training process), never a traceback.
Every handler gets the language radio's value first, so that what it writes (and its errors) is
in the page's language (i18n.py); switching the language relabels every component.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

import gradio as gr

from ..choices import DATA_FORMATS, DTYPES, EXPORT_FORMATS, EXPORT_OUTTYPES, METHODS, QUANTIZATIONS, TEMPLATES
from ..errors import LoraFinetuneError
from .actions import ESTIMATE_FIELDS, MORE_FIELDS, TRAIN_FIELDS, WebUI, default_settings, training_device
from .i18n import LANGS, ZH, bilingual, columns, error_text, setting_info, setting_label, state_text, t
from .paths import Workdir

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- errors
def page_message(e: BaseException, lang: str = "English") -> str:
    """An exception as the page says it: the package's message (in 中文 mode its Chinese text,
    or `出错：` and the English one); a bug in words, its traceback only in the server's log."""
    if isinstance(e, LoraFinetuneError):
        return error_text(e, lang)
    log.error("web UI handler failed", exc_info=e)
    first = str(e).splitlines()[0][:200] if str(e) else t("no_message", lang)
    return t("error_lead", lang) + t("unexpected", lang, kind=type(e).__name__, first=first)


def _page_error(e: BaseException, lang: str = "English") -> gr.Error:
    text = page_message(e, lang)
    return gr.Error(
        html.escape(text).replace("\n", "<br>"), duration=None, print_exception=False, title=t("error_title", lang)
    )


def _lang_of(args: tuple) -> str:
    return args[0] if args and isinstance(args[0], str) and args[0] in LANGS else "English"


def friendly(fn):
    """Turn the package's errors into a message on the page (functions and generators), in the
    page's language: a handler's first argument is the language radio's value."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args, **kw):
            try:
                yield from fn(*args, **kw)
            except gr.Error:
                raise
            except Exception as e:
                raise _page_error(e, _lang_of(args)) from None

        return gen

    @functools.wraps(fn)
    def call(*args, **kw):
        try:
            return fn(*args, **kw)
        except gr.Error:
            raise
        except Exception as e:
            raise _page_error(e, _lang_of(args)) from None

    return call


# --------------------------------------------------------------------------- settings widgets
def _setting(name: str, value: Any) -> gr.components.Component:
    """A training setting's widget: the config key as its label (with its Chinese name in 中文
    mode), the config's field doc as its help."""
    info = setting_info(name, "English")
    choices = {
        "template": TEMPLATES,
        "quantization": QUANTIZATIONS,
        "dtype": DTYPES,
        "data_format": DATA_FORMATS,
        "method": METHODS,
    }.get(name)
    kw = dict(label=setting_label(name, "English"), info=info, elem_id=f"set-{name}")
    if choices:
        return gr.Dropdown(list(choices), value=value, **kw)
    if isinstance(value, bool):
        return gr.Checkbox(value=value, **kw)
    if isinstance(value, int) or name in ("steps",):
        return gr.Number(value=value, precision=0, **kw)
    if isinstance(value, float):
        return gr.Number(value=value, **kw)
    return gr.Textbox(value=value or "", **kw)


def _progress_html(prog: Any, lang: str) -> str:
    pct = int(round(100 * prog.fraction))
    eta = " · " + t("eta", lang, eta=prog.eta) if prog.eta and prog.state == "running" else ""
    steps = t("progress_steps", lang, step=prog.step, total=prog.total, pct=pct) if prog.total else ""
    rewards = ""
    for split in ("train", "eval"):
        if prog.rewards.get(split):  # preference methods: the latest reward accuracy and margin
            _, acc, margin = prog.rewards[split][-1]
            rewards += " · " + t("rewards", lang, split=t(f"split_{split}", lang), acc=acc)
            rewards += t("reward_margin", lang, margin=margin) if margin is not None else ""
    return (
        f'<div id="train-progress-state" data-state="{prog.state}" data-step="{prog.step}" data-total="{prog.total}">'
        f"<b>{html.escape(state_text(prog.state, lang))}</b> {steps}{eta}"
        f'<span id="train-rewards">{html.escape(rewards)}</span>'
        f'<div style="background:#eee;height:10px;border-radius:5px;margin-top:4px">'
        f'<div style="background:#f97316;height:10px;border-radius:5px;width:{pct}%"></div></div></div>'
    )


def _curve(prog: Any, lang: str = "English"):
    import pandas as pd

    train, held_out = t("curve_train", lang), t("curve_eval", lang)
    rows = [(s, v, train) for s, v in prog.train] + [(s, v, held_out) for s, v in prog.eval]
    # preference methods: the reward accuracy (0-1) beside their loss (0-0.7 at the start)
    rows += [
        (s, acc, t("curve_reward", lang, split=train if split == "train" else held_out))
        for split, points in prog.rewards.items()
        for s, acc, _ in points
    ]
    return pd.DataFrame(rows, columns=["step", "loss", "split"])


def _table(rows: list[list[Any]], lang: str):
    """A header row and its rows as a DataFrame, the header in the page's language."""
    import pandas as pd

    return pd.DataFrame(rows[1:], columns=columns(rows[0], lang))


def _export_kinds(lang: str) -> list[tuple[str, str]]:
    return [(t(f"kind_{k}", lang), k) for k in ("merge", *EXPORT_FORMATS)]


# --------------------------------------------------------------------------- the page
def build_app(workdir: Workdir, ui: WebUI | None = None) -> gr.Blocks:
    ui = ui or WebUI(workdir)
    defaults = default_settings()
    on_gpu = training_device() == "cuda"
    # (component, the update for a language): what the language switch changes
    labeled: list[tuple[Any, Callable[[str], dict[str, Any]]]] = []

    def L(comp: Any, key: str, attr: str = "label") -> Any:
        labeled.append((comp, lambda lang: {attr: t(key, lang)}))
        return comp

    with gr.Blocks(title="lora-finetune") as demo:
        with gr.Row():
            title = gr.Markdown(t("title"))
            lang = gr.Radio(list(LANGS), value="English", label=t("language"), elem_id="lang", scale=0)
        intro = gr.Markdown(t("intro").format(root=workdir.root))

        with gr.Tabs():
            # ------------------------------------------------------------- train
            with L(gr.Tab(t("tab_train"), id="train", elem_id="tab-train"), "tab_train"):
                with gr.Row():
                    model = L(gr.Textbox("smollm2-135m-instruct", label=t("model"), elem_id="model"), "model")
                    run_name = L(gr.Textbox("my-run", label=t("run_name"), elem_id="run-name"), "run_name")
                    trust = L(gr.Checkbox(False, label=t("trust_remote_code"), elem_id="trust"), "trust_remote_code")
                with gr.Row():
                    upload = L(
                        gr.File(
                            label=t("upload"), file_types=[".jsonl", ".json", ".csv", ".parquet"], elem_id="upload"
                        ),
                        "upload",
                    )
                    with gr.Column():
                        data = L(gr.Textbox("", label=t("data_path"), elem_id="data-path"), "data_path")
                        check = L(gr.Button(t("check_data"), elem_id="check-data"), "check_data", "value")
                stats = L(
                    gr.Textbox(label=t("data_stats"), lines=3, interactive=False, elem_id="data-stats"), "data_stats"
                )
                samples = L(
                    gr.HighlightedText(
                        label=t("samples"),
                        color_map={t("learned", lang): "green" for lang in LANGS},
                        combine_adjacent=True,
                        elem_id="samples",
                    ),
                    "samples",
                )
                settings: dict[str, Any] = {}
                with L(gr.Accordion(t("settings"), open=True), "settings"):
                    with gr.Row():
                        for name in TRAIN_FIELDS:
                            settings[name] = _setting(name, defaults[name])
                with L(gr.Accordion(t("more_settings"), open=False), "more_settings"):
                    with gr.Row():
                        for name in MORE_FIELDS:
                            settings[name] = _setting(name, defaults[name])
                for name, comp in settings.items():
                    labeled.append(
                        (
                            comp,
                            lambda lang, name=name: {
                                "label": setting_label(name, lang),
                                "info": setting_info(name, lang),
                            },
                        )
                    )
                est_key = "estimate_gpu" if on_gpu else "estimate_cpu"
                estimate = L(gr.Textbox(label=t(est_key), lines=3, interactive=False, elem_id="estimate"), est_key)
                with gr.Row():
                    overwrite = L(gr.Checkbox(False, label=t("overwrite"), elem_id="overwrite"), "overwrite")
                    start = L(gr.Button(t("start"), variant="primary", elem_id="start"), "start", "value")
                    stop = L(gr.Button(t("stop"), variant="stop", elem_id="stop"), "stop", "value")
                    resume = L(gr.Button(t("resume"), elem_id="resume"), "resume", "value")
                status = L(gr.Textbox(label=t("status"), lines=2, interactive=False, elem_id="train-status"), "status")
                progress = gr.HTML(_progress_html(ui.jobs.progress(""), "English"), elem_id="train-progress")
                curve = gr.LinePlot(
                    x="step",
                    y="loss",
                    color="split",
                    label=t("loss_curve"),
                    x_title=t("step"),
                    y_title=t("loss"),
                    elem_id="loss-plot",
                )
                labeled.append(
                    (
                        curve,
                        lambda lang: {
                            "label": t("loss_curve", lang),
                            "x_title": t("step", lang),
                            "y_title": t("loss", lang),
                        },
                    )
                )
                logbox = L(
                    gr.Textbox(label=t("log"), lines=10, max_lines=20, interactive=False, elem_id="train-log"), "log"
                )
                timer = gr.Timer(1.0)

            # ------------------------------------------------------------- chat
            with L(gr.Tab(t("tab_chat"), id="chat", elem_id="tab-chat"), "tab_chat"):
                with gr.Row():
                    model_a = gr.Dropdown([], label=t("model_a"), elem_id="model-a")
                    model_b = gr.Dropdown([], label=t("model_b"), elem_id="model-b")
                    # relabelled with the language: the same values, so the choice is kept
                    labeled.append(
                        (model_a, lambda lang: {"label": t("model_a", lang), "choices": ui.model_choices(lang)})
                    )
                    labeled.append(
                        (
                            model_b,
                            lambda lang: {"label": t("model_b", lang), "choices": [("—", ""), *ui.model_choices(lang)]},
                        )
                    )
                    refresh = L(gr.Button(t("refresh"), elem_id="refresh-models", scale=0), "refresh", "value")
                system = L(gr.Textbox("", label=t("system"), elem_id="system"), "system")
                with L(gr.Accordion(t("generation"), open=False), "generation"):
                    with gr.Row():
                        max_new = L(
                            gr.Slider(1, 2048, 128, step=1, label=t("max_new_tokens"), elem_id="gen-max_new_tokens"),
                            "max_new_tokens",
                        )
                        temperature = L(
                            gr.Slider(0, 2, 0, step=0.05, label=t("temperature"), elem_id="gen-temperature"),
                            "temperature",
                        )
                        top_p = L(gr.Slider(0.05, 1, 0.9, step=0.05, label=t("top_p"), elem_id="gen-top_p"), "top_p")
                        rep = L(
                            gr.Slider(
                                0.5, 2, 1.0, step=0.05, label=t("repetition_penalty"), elem_id="gen-repetition_penalty"
                            ),
                            "repetition_penalty",
                        )
                with gr.Row():
                    chat_a = L(gr.Chatbot(label=t("chat_a"), elem_id="chat-a", height=320), "chat_a")
                    chat_b = L(gr.Chatbot(label=t("chat_b"), elem_id="chat-b", height=320), "chat_b")
                with gr.Row():
                    message = L(gr.Textbox("", label=t("message"), elem_id="message", scale=4), "message")
                    send = L(gr.Button(t("send"), variant="primary", elem_id="send", scale=0), "send", "value")
                    clear = L(gr.Button(t("clear"), elem_id="clear", scale=0), "clear", "value")

            # ------------------------------------------------------------- evaluate
            with L(gr.Tab(t("tab_eval"), id="eval", elem_id="tab-eval"), "tab_eval"):
                with gr.Row():
                    eval_adapter = L(gr.Dropdown([], label=t("adapter"), elem_id="eval-adapter"), "adapter")
                    eval_data = L(gr.Textbox("", label=t("eval_data"), elem_id="eval-data"), "eval_data")
                    eval_upload = L(
                        gr.File(
                            label=t("eval_upload"),
                            file_types=[".jsonl", ".json", ".csv", ".parquet"],
                            elem_id="eval-upload",
                        ),
                        "eval_upload",
                    )
                with gr.Row():
                    eval_max = L(gr.Number(0, precision=0, label=t("max_samples"), elem_id="eval-max"), "max_samples")
                    eval_new = L(
                        gr.Number(64, precision=0, label=t("max_new_tokens"), elem_id="eval-max-new"), "max_new_tokens"
                    )
                    eval_base = L(gr.Checkbox(False, label=t("compare_base"), elem_id="eval-base"), "compare_base")
                    eval_loss = L(gr.Checkbox(False, label=t("loss_only"), elem_id="eval-loss-only"), "loss_only")
                    run_eval = L(gr.Button(t("run_eval"), variant="primary", elem_id="run-eval"), "run_eval", "value")
                eval_metrics = L(gr.Dataframe(label=t("metrics"), elem_id="eval-metrics"), "metrics")
                eval_worst = L(gr.Dataframe(label=t("worst"), elem_id="eval-worst"), "worst")
                eval_report = L(gr.Textbox(label=t("report"), interactive=False, elem_id="eval-report"), "report")
                with L(gr.Accordion(t("bench"), open=False, elem_id="bench"), "bench"):
                    with gr.Row():
                        bench_tasks = L(
                            gr.Textbox("lora_demo_zh", label=t("bench_tasks"), elem_id="bench-tasks", scale=3),
                            "bench_tasks",
                        )
                        bench_limit = L(gr.Number(0, precision=0, label=t("bench_limit")), "bench_limit")
                        bench_shots = L(gr.Number(-1, precision=0, label=t("bench_fewshot")), "bench_fewshot")
                        bench_base = L(gr.Checkbox(True, label=t("compare_base")), "compare_base")
                        run_bench = L(
                            gr.Button(t("run_bench"), variant="primary", elem_id="run-bench"), "run_bench", "value"
                        )
                    bench_table = L(gr.Dataframe(label=t("bench_table"), elem_id="bench-table"), "bench_table")
                    bench_report = L(gr.Textbox(label=t("report"), interactive=False, elem_id="bench-report"), "report")

            # ------------------------------------------------------------- export
            with L(gr.Tab(t("tab_export"), id="export", elem_id="tab-export"), "tab_export"):
                with gr.Row():
                    exp_adapter = L(gr.Dropdown([], label=t("adapter"), elem_id="export-adapter"), "adapter")
                    exp_kind = gr.Radio(
                        _export_kinds("English"), value="merge", label=t("export_kind"), elem_id="export-kind"
                    )
                    labeled.append(
                        (exp_kind, lambda lang: {"label": t("export_kind", lang), "choices": _export_kinds(lang)})
                    )
                    exp_outtype = L(
                        gr.Dropdown(list(EXPORT_OUTTYPES), value="f16", label=t("outtype"), elem_id="export-outtype"),
                        "outtype",
                    )
                with gr.Row():
                    exp_name = L(gr.Textbox("merged", label=t("export_name"), elem_id="export-name"), "export_name")
                    exp_over = L(
                        gr.Checkbox(False, label=t("overwrite_export"), elem_id="export-overwrite"), "overwrite_export"
                    )
                    run_exp = L(
                        gr.Button(t("run_export"), variant="primary", elem_id="run-export"), "run_export", "value"
                    )
                exp_result = L(
                    gr.Textbox(label=t("export_result"), lines=6, interactive=False, elem_id="export-result"),
                    "export_result",
                )

        # ================================================================= handlers
        # Every handler's first input is the language (friendly() reads it for its errors).
        names = list(settings)
        setting_inputs = [settings[n] for n in names]

        def collect(values: tuple) -> dict[str, Any]:
            return dict(zip(names, values))

        # --- data: upload -> data/, then the check
        @friendly
        def on_upload(lang_v: str, file: Any) -> tuple[str, None]:
            """The file lands in data/ and its path in the box; the upload widget is emptied for the next one."""
            if file is None:
                return gr.skip(), None
            path = file if isinstance(file, str) else getattr(file, "name", str(file))
            try:
                dst = ui.wd.take_upload(path, os.path.basename(getattr(file, "orig_name", "") or path))
            finally:
                try:  # Gradio's copy of the upload is not kept
                    os.unlink(path)
                except OSError:
                    pass
            return ui.wd.relative(dst), None

        @friendly
        def on_check(lang_v, model_v, data_v, trust_v, *values):
            s = collect(values)
            prev = ui.data_preview(
                model_v,
                data_v,
                template=s.get("template") or "auto",
                system_prompt=s.get("system_prompt") or None,
                max_length=int(s.get("max_length") or 768),
                data_format=s.get("data_format") or "auto",
                trust_remote_code=trust_v,
                method=s.get("method") or "sft",
                lang=lang_v,
            )
            return prev.stats, prev.samples

        upload.upload(on_upload, [lang, upload], [data, upload]).success(
            on_check, [lang, model, data, trust, *setting_inputs], [stats, samples]
        )
        check.click(on_check, [lang, model, data, trust, *setting_inputs], [stats, samples])

        # --- estimate, live (and again when the language changes)
        def on_estimate(lang_v, model_v, trust_v, *values):
            try:
                return ui.estimate(model_v, collect(values), trust_remote_code=trust_v, lang=lang_v)
            except LoraFinetuneError as e:  # typed half-way: the box says why, no pop-up
                return t("no_estimate", lang_v, error=error_text(e, lang_v))
            except Exception as e:
                log.debug("estimate failed", exc_info=e)
                return t("no_estimate", lang_v, error=t("error_lead", lang_v) + f"{type(e).__name__}: {e}")

        # One estimate at a time, in the order asked, the latest kept: with a listener per field,
        # typing r then max_length ran two estimates at once, and the older one (r still 8) could
        # finish last and stay on the page.
        est_inputs = [lang, model, trust, *setting_inputs]
        one_at_a_time = dict(show_progress="hidden", concurrency_id="estimate", concurrency_limit=1)
        gr.on(
            [lang.change, model.change, *(settings[n].change for n in ESTIMATE_FIELDS)],
            on_estimate,
            est_inputs,
            estimate,
            trigger_mode="always_last",
            **one_at_a_time,
        )
        demo.load(on_estimate, est_inputs, estimate, **one_at_a_time)

        # --- start / stop / resume, and the view of the run
        @friendly
        def on_start(lang_v, name_v, model_v, data_v, trust_v, over_v, *values):
            job = ui.start(name_v, model_v, data_v, collect(values), trust_remote_code=trust_v, overwrite=over_v)
            return t(
                "starting_at",
                lang_v,
                state=state_text("starting", lang_v),
                where=ui.wd.relative(job.output_dir),
                log=ui.wd.relative(job.log_path),
            )

        @friendly
        def on_resume(lang_v, name_v, model_v, data_v, trust_v, over_v, *values):
            job = ui.resume(name_v, model_v, data_v, collect(values), trust_remote_code=trust_v)
            return t("resuming_at", lang_v, state=state_text("starting", lang_v), where=ui.wd.relative(job.output_dir))

        @friendly
        def on_stop(lang_v, name_v):
            ui.stop(name_v)
            return state_text("stopping", lang_v)

        run_inputs = [lang, run_name, model, data, trust, overwrite, *setting_inputs]
        start.click(on_start, run_inputs, status)
        resume.click(on_resume, run_inputs, status)
        stop.click(on_stop, [lang, run_name], status)

        def on_tick(lang_v, name_v, status_v):
            try:
                name_v = ui.wd.name(name_v, "run name")
            except LoraFinetuneError:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            prog = ui.jobs.progress(name_v)
            if prog.state == "idle":
                return _progress_html(prog, lang_v), gr.skip(), gr.skip(), gr.skip()
            msg = status_v
            if prog.message:
                # the training process's own last words (the CLI's summary or error), after the state
                state = "failed" if prog.state == "running" else prog.state  # running: a refused second start
                if state == "failed":
                    msg = t("failed_message", lang_v, state=state_text(state, lang_v), message=prog.message)
                elif state == "finished" and lang_v != ZH:
                    msg = prog.message
                else:
                    msg = t("state_message", lang_v, state=state_text(state, lang_v), message=prog.message)
            return _progress_html(prog, lang_v), _curve(prog, lang_v), prog.log_tail, msg

        # a reopened tab shows the run started last (training went on without it)
        demo.load(lambda: ui.jobs.latest_name() or gr.skip(), None, run_name)
        timer.tick(on_tick, [lang, run_name, status], [progress, curve, logbox, status], show_progress="hidden")

        # --- chat
        def choices_update(lang_v):
            choices = ui.model_choices(lang_v)
            first = choices[0][1] if choices else None
            both = [("—", "")] + choices
            adapters = ui.adapters()
            return (
                gr.update(choices=choices, value=first),
                gr.update(choices=both, value=""),
                gr.update(choices=adapters, value=adapters[0] if adapters else None),
                gr.update(choices=adapters, value=adapters[0] if adapters else None),
            )

        refresh.click(choices_update, lang, [model_a, model_b, eval_adapter, exp_adapter])
        demo.load(choices_update, lang, [model_a, model_b, eval_adapter, exp_adapter])

        @friendly
        def on_send(lang_v, a, b, hist_a, hist_b, msg, sys_v, mx, temp, tp, rp):
            from ..use.chat import GenerationSettings

            if not a:
                raise bilingual(
                    LoraFinetuneError("Choose Model A first (train an adapter, then press Refresh list)."),
                    "请先选择模型 A（先训练一个适配器，再点击“刷新列表”）。",
                )
            empty = t("empty_answer", lang_v)
            gen = GenerationSettings(int(mx), float(temp), float(tp), float(rp))
            hist_a, hist_b = list(hist_a or []), list(hist_b or [])
            prior_a, prior_b = list(hist_a), list(hist_b)
            hist_a.append({"role": "user", "content": msg})
            hist_a.append({"role": "assistant", "content": ""})
            if b:
                hist_b.append({"role": "user", "content": msg})
            for text in ui.chat(a, prior_a, msg, gen, sys_v):
                hist_a[-1] = {"role": "assistant", "content": text or empty}
                yield hist_a, hist_b, ""
            if b:
                hist_b.append({"role": "assistant", "content": ""})
                for text in ui.chat(b, prior_b, msg, gen, sys_v):
                    hist_b[-1] = {"role": "assistant", "content": text or empty}
                    yield hist_a, hist_b, ""

        chat_inputs = [lang, model_a, model_b, chat_a, chat_b, message, system, max_new, temperature, top_p, rep]
        send.click(on_send, chat_inputs, [chat_a, chat_b, message])
        message.submit(on_send, chat_inputs, [chat_a, chat_b, message])
        clear.click(lambda: ([], []), None, [chat_a, chat_b])

        # --- evaluate
        eval_upload.upload(on_upload, [lang, eval_upload], [eval_data, eval_upload])

        @friendly
        def on_eval(lang_v, adapter_v, data_v, mx, new, base_v, loss_v):
            table, worst, report = ui.evaluate(
                adapter_v, data_v, int(mx or 0), bool(base_v), bool(loss_v), int(new or 64)
            )
            return _table(table, lang_v), _table(worst, lang_v), ui.wd.relative(report)

        run_eval.click(
            on_eval,
            [lang, eval_adapter, eval_data, eval_max, eval_new, eval_base, eval_loss],
            [eval_metrics, eval_worst, eval_report],
        )

        @friendly
        def on_bench(lang_v, adapter_v, tasks_v, limit_v, shots_v, base_v):
            shots = int(shots_v) if shots_v is not None and int(shots_v) >= 0 else None
            table, report = ui.benchmark(adapter_v, tasks_v, int(limit_v or 0) or None, shots, bool(base_v))
            return _table(table, lang_v), report

        run_bench.click(
            on_bench,
            [lang, eval_adapter, bench_tasks, bench_limit, bench_shots, bench_base],
            [bench_table, bench_report],
        )

        # --- export
        @friendly
        def on_export(lang_v, adapter_v, kind_v, name_v, outtype_v, over_v):
            return ui.export(adapter_v, kind_v, name_v, outtype_v, bool(over_v), lang=lang_v)

        run_exp.click(on_export, [lang, exp_adapter, exp_kind, exp_name, exp_outtype, exp_over], exp_result)

        # --- language: every label, help and list of choices
        def on_lang(lang_v):
            out = [gr.update(value=t("title", lang_v)), gr.update(value=t("intro", lang_v).format(root=workdir.root))]
            out += [gr.update(**update(lang_v)) for _, update in labeled]
            return out

        lang.change(on_lang, lang, [title, intro, *(c for c, _ in labeled)])  # (the estimate: above)

    demo.webui = ui  # type: ignore[attr-defined]  (for tests and the CLI's shutdown)
    # for tests: the language switch's handler and the components it updates, in its order
    demo.relabel = on_lang  # type: ignore[attr-defined]
    demo.relabeled = [title, intro, *(c for c, _ in labeled)]  # type: ignore[attr-defined]
    return demo


__all__ = ["build_app", "friendly"]
