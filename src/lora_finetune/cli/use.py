"""Verbs that use a trained adapter: chat, generate, eval, merge; and `modules` (what LoRA can
target in a model). Every verb needs only the adapter folder: the base model, template, dtype
and quantisation come from its run_config.yaml (flags override them).

This module and the rest of the CLI package are the only places that print.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from ..choices import DATA_FORMATS, MERGE_DTYPES
from ..errors import ConfigError
from .flags import bool_flag, gen_flags, load_flags, opt, positive_int


def _quiet_hf() -> None:
    """transformers' own progress bars (loading/writing shards) are noise next to ours."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _load(args: argparse.Namespace, base_only: bool = False):
    import time

    from ..use import load_for_inference

    what = args.adapter if args.adapter and not base_only else args.base_model or f"the base of {args.adapter}"
    print(f"Loading {what} ...", file=sys.stderr, flush=True)  # a large base takes a while: say so
    t0 = time.perf_counter()
    im = load_for_inference(
        args.adapter,
        base_model=args.base_model,
        base_only=base_only,
        template=args.template,
        dtype=args.dtype,
        quantization=args.quantization,
        device=args.device,
    )
    print(f"Loaded in {time.perf_counter() - t0:.1f}s.", file=sys.stderr, flush=True)
    return im


def _describe(im: Any) -> str:
    what = f"{im.base_model}"
    if im.has_adapter:
        what += f" + adapter {im.adapter_dir}"
    elif im.adapter_dir is not None:
        what += " (base only, adapter not applied)"
    q = f", {im.quantization}" if im.quantization != "none" else ""
    return f"{what} (template {getattr(im.template, 'name', '?')}{q}, {im.device})"


# --------------------------------------------------------------------------- chat
def chat_loop(session: Any, stdin: TextIO, stdout: TextIO, *, interactive: bool = False) -> int:
    """Read lines from stdin until /exit or end of input; stream each answer to stdout.

    Piped (non-interactive) input is echoed as `You: ...` so a transcript reads as a dialogue.
    A line starting with `//` is sent as text starting with `/`.
    """
    from ..use.chat import ChatCommandError

    def say(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    while True:
        try:
            if interactive:
                line = input("\nYou: ")
            else:
                line = stdin.readline()
                if not line:
                    break
                line = line.rstrip("\r\n")
        except EOFError:
            break
        except KeyboardInterrupt:
            say("\n")
            break
        if not line.strip():
            continue
        if line.startswith("/") and not line.startswith("//"):
            if not interactive:
                say(f"You: {line}\n")
            try:
                msg, keep_going = session.command(line)
            except ChatCommandError as e:
                say(f"[{e}]\n")
                continue
            say(f"[{msg}]\n" if "\n" not in msg else msg + "\n")
            if not keep_going:
                return 0
            continue
        text = line[1:] if line.startswith("//") else line
        if not interactive:
            say(f"You: {text}\n")
        say("Assistant: ")
        try:
            reply = session.send(text, on_text=say)
        except KeyboardInterrupt:
            say("\n[interrupted; this round is not kept]\n")
            continue
        except ChatCommandError as e:
            say(f"\n[{e}]\n")
            continue
        say("\n")
        if not reply.stopped:
            say(
                f"[cut at max_new_tokens={session.settings.max_new_tokens}; /set max_new_tokens N for longer answers]\n"
            )
        if reply.dropped_rounds:
            say(f"[the {reply.dropped_rounds} oldest round(s) no longer fit the model's context and were dropped]\n")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from ..use.chat import ChatSession, GenerationSettings

    _quiet_hf()
    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.repetition_penalty)
    settings.check()
    if args.adapter is None and args.base_model is None:
        raise ConfigError("chat needs --adapter DIR (or --base_model NAME to chat with a base model)")
    im = _load(args, base_only=args.base_only)
    session = ChatSession(im, settings, system=args.system)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    print(f"Chatting with {_describe(im)}; {settings.describe()}.", file=sys.stderr)
    print("Type /help for commands, /reset to start over, /exit to leave.", file=sys.stderr)
    return chat_loop(session, sys.stdin, sys.stdout, interactive=interactive)


# --------------------------------------------------------------------------- generate
def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, disable=None)


def cmd_generate(args: argparse.Namespace) -> int:
    from ..run_record import open_adapter
    from ..use.files import check_output_path, generate_file, read_prompt_records

    _quiet_hf()
    # Adapter, data and output first: each fails in a second, before the model loads.
    if args.adapter:
        open_adapter(args.adapter)
    n = len(read_prompt_records(args.input, args.data_format)[1])
    check_output_path(args.input, args.output)
    im = _load(args, base_only=args.base_only)
    if args.max_samples is not None:
        n = min(n, args.max_samples)
    with _progress(n, "generating") as bar:
        res = generate_file(
            im,
            args.input,
            args.output,
            data_format=args.data_format,
            max_samples=args.max_samples,
            progress=bar.update,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            batch_size=args.batch_size,
        )
    cut = res.rows - res.stopped
    print(
        f"Wrote {res.rows} rows with `prediction` to {res.output_path} "
        f"({res.generated_tokens} tokens in {res.seconds:.1f}s with {_describe(im)})"
    )
    if cut:
        print(
            f"  {cut} answer(s) were cut at max_new_tokens={args.max_new_tokens}; raise "
            "--max_new_tokens for complete answers."
        )
    return 0


# --------------------------------------------------------------------------- eval
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1e6 else f"{v:.3g}"
    return str(v)


def format_eval_table(report: dict[str, Any]) -> str:
    metrics = report["metrics"]
    cols = list(metrics)
    rows = [
        ("loss", "loss", 4),
        ("perplexity", "perplexity", 2),
        ("BLEU-4", "bleu-4", 2),
        ("ROUGE-1", "rouge-1", 2),
        ("ROUGE-2", "rouge-2", 2),
        ("ROUGE-L", "rouge-l", 2),
        ("answer tokens", "answer_tokens", 0),
    ]
    lines = [f"{'metric':<14}" + "".join(f"{c:>12}" for c in cols)]
    for label, key, digits in rows:
        if all(key not in metrics[c] for c in cols):
            continue
        lines.append(f"{label:<14}" + "".join(f"{_fmt(metrics[c].get(key), digits):>12}" for c in cols))
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..data import record_kind
    from ..use.evaluation import check_report_path, evaluate
    from ..use.files import read_prompt_records

    _quiet_hf()
    # The data and the report path first: each fails in a second, before the model loads.
    _, records = read_prompt_records(args.data, args.data_format, kinds=("instruction", "preference"))
    check_report_path(args.report)
    im = _load(args, base_only=args.base_only)
    if records and record_kind(records[0]) == "preference":
        return _eval_pairs(args, im, records)
    n = sum(r["messages"][-1]["role"] == "assistant" for r in records)
    n = min(n, args.max_samples) if args.max_samples is not None else n
    runs = 2 if args.compare_base and im.has_adapter else 1
    with _progress(0 if args.loss_only else n * runs, "generating") as bar:
        res = evaluate(
            args.adapter,
            args.data,
            im=im,
            data_format=args.data_format,
            max_samples=args.max_samples,
            compare_base=args.compare_base,
            generation=not args.loss_only,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            report_path=args.report,
            progress=bar.update,
        )
    rep = res.report
    print(
        f"Evaluated {_describe(im)} on {rep['samples']} sample(s) of {rep['data']}"
        + (f" ({rep['skipped_without_answer']} without an answer skipped)" if rep["skipped_without_answer"] else "")
    )
    print(format_eval_table(rep))
    if not args.loss_only:
        print(
            "BLEU-4 and ROUGE are x100 (jieba words for Chinese, whitespace otherwise); "
            f"greedy decoding, max_new_tokens={args.max_new_tokens}."
        )
    print(f"Report with every prediction: {res.report_path}")
    return 0


def format_pair_table(report: dict[str, Any]) -> str:
    metrics = report["metrics"]
    cols = list(metrics)
    lines = [f"{'metric':<20}" + "".join(f"{c:>12}" for c in cols)]
    lines.append(f"{'preference accuracy':<20}" + "".join(f"{metrics[c]['preference_accuracy']:>12.1%}" for c in cols))
    lines.append(f"{'mean margin':<20}" + "".join(f"{metrics[c]['mean_margin']:>12.4f}" for c in cols))
    return "\n".join(lines)


def _eval_pairs(args: argparse.Namespace, im: Any, records: list[dict[str, Any]]) -> int:
    """A file of preference pairs: which answer the model prefers (use/pair_eval.py)."""
    from ..use.pair_eval import evaluate_pairs

    n = min(len(records), args.max_samples) if args.max_samples is not None else len(records)
    runs = 2 if args.compare_base and im.has_adapter else 1
    with _progress(n * runs, "scoring pairs") as bar:
        res = evaluate_pairs(
            args.adapter,
            args.data,
            records,
            im=im,
            max_samples=args.max_samples,
            compare_base=args.compare_base,
            batch_size=args.batch_size,
            report_path=args.report,
            progress=bar.update,
        )
    rep = res.report
    print(f"Scored {_describe(im)} on {rep['samples']} preference pair(s) of {rep['data']}")
    print(format_pair_table(rep))
    print(
        "Preference accuracy: the share of pairs whose chosen answer gets the higher mean log-probability "
        "per token (about 50% for a model the pairs mean nothing to); no generation."
    )
    print(f"Report with every pair's scores: {res.report_path}")
    return 0


# --------------------------------------------------------------------------- merge
def cmd_merge(args: argparse.Namespace) -> int:
    from ..use.merging import merge

    _quiet_hf()
    res = merge(
        args.adapter,
        args.output,
        dtype=args.dtype,
        overwrite=args.overwrite,
        check=not args.no_check,
        base_model=args.base_model,
        max_shard_size=args.max_shard_size,
        device=args.device,
    )
    for note in res.notes:
        print(f"Note: {note}.")
    print(
        f"Merged {args.adapter} into {res.base_model} -> {res.output_dir} ({res.dtype}; "
        f"generation_config eos_token_id={res.stop_token_ids})"
    )
    if res.max_abs_diff is not None:
        scale = f" (logits up to {res.max_abs_logit:.3g})" if res.max_abs_logit else ""
        print(
            f"Check: merged vs base+adapter logits over {res.check_tokens} tokens, largest "
            f"absolute difference {res.max_abs_diff:.3g}{scale}; same next token at "
            f"{100 * (res.top1_agreement or 0):.1f}% of positions"
        )
        if res.dtype != "fp32":
            print(
                f"  ({res.dtype}: both models round differently, so logit differences of a "
                "few units and different picks at near-ties are expected; --dtype fp32 gives "
                "an exact comparison)"
            )
    print(f"Load it anywhere, no peft needed: AutoModelForCausalLM.from_pretrained({str(res.output_dir)!r})")
    return 0


# --------------------------------------------------------------------------- registration
def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    c = sub.add_parser(
        "chat",
        help="chat with an adapter in the terminal (streams tokens)",
        formatter_class=fmt,
        description=(
            "Multi-turn chat in the adapter's training template. Commands: "
            "/reset, /exit, /set NAME VALUE (e.g. /set temperature 0.7), "
            "/settings, /system TEXT, /help. Works with piped stdin."
        ),
    )
    load_flags(c, adapter_required=False)
    bool_flag(c, "base-only", help="chat with the base model alone (same template and settings), to compare")
    opt(c, "system", help="system prompt (default: the one the adapter was trained with)")
    gen_flags(c, 512)
    c.set_defaults(func=cmd_chat)

    g = sub.add_parser(
        "generate",
        help="answer every record of a data file (batched)",
        description="Batched generation over json/jsonl/csv/parquet files in "
        "alpaca, messages or ShareGPT form (answers optional: a "
        "record's final answer is dropped and its last user turn "
        "answered). Each row keeps its fields and gets `prediction`.",
    )
    load_flags(g)
    opt(g, "input", type=Path, required=True, help="prompts file (.json/.jsonl/.csv/.parquet)")
    opt(
        g,
        "output",
        type=Path,
        required=True,
        help="output file; format by suffix: .jsonl (default), .json, .csv, .parquet",
    )
    opt(g, "data_format", default="auto", choices=DATA_FORMATS)
    opt(g, "batch_size", type=positive_int, default=8, help="prompts per batch (default 8)")
    opt(g, "max_samples", type=positive_int, help="only the first N records")
    bool_flag(g, "base-only", help="generate with the base model alone")
    gen_flags(g, 256)
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser(
        "eval",
        help="loss/perplexity and BLEU-4/ROUGE of an adapter on a file; on preference pairs, which answer it prefers",
        description="Loss and perplexity on the answer tokens (labels as in "
        "training) and, from greedy generation, BLEU-4 and "
        "ROUGE-1/2/L x100 (jieba words for Chinese).",
    )
    load_flags(e)
    opt(e, "data", type=Path, required=True, help="data with answers, or preference pairs (same formats as train)")
    opt(e, "data_format", default="auto", choices=DATA_FORMATS)
    opt(e, "report", type=Path, help="JSON report path (default ADAPTER/eval_report.json)")
    bool_flag(e, "compare-base", help="also measure the base model (adapter switched off)")
    bool_flag(e, "base-only", help="measure the base model alone")
    opt(e, "max_samples", type=positive_int, help="only the first N samples with answers")
    opt(e, "batch_size", type=positive_int, default=8, help="samples (or pairs) per batch (default 8)")
    opt(e, "max_new_tokens", type=positive_int, default=128, help="longest generated answer (128)")
    bool_flag(e, "loss-only", help="skip generation (loss and perplexity only)")
    e.set_defaults(func=cmd_eval)

    m = sub.add_parser(
        "merge",
        help="fold the adapter into the base: a standalone model folder",
        description="Writes safetensors shards, config, tokenizer and a "
        "generation_config with the stop ids; loads with plain "
        "AutoModelForCausalLM.from_pretrained, no peft. An adapter "
        "trained on a 4-bit base is merged onto the base reloaded "
        "unquantised.",
    )
    opt(m, "adapter", type=Path, required=True, metavar="DIR")
    opt(m, "output", type=Path, required=True, metavar="DIR", help="new model folder")
    opt(m, "dtype", choices=MERGE_DTYPES, help="weights dtype (default: the dtype the adapter was trained in)")
    bool_flag(m, "overwrite", help="replace an existing --output folder")
    opt(m, "base_model", metavar="NAME_OR_PATH", help="override the base in run_config.yaml")
    opt(m, "max_shard_size", default="2GB", help="largest safetensors shard (default 2GB)")
    opt(m, "device", help="where to merge and check (default cpu)")
    bool_flag(m, "no-check", help="skip reloading the merged folder to compare its logits with base+adapter")
    m.set_defaults(func=cmd_merge)
