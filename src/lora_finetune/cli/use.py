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

from ._args import opt as _opt
from ._args import parse_bool as _bool




def _load_flags(p: argparse.ArgumentParser, adapter_required: bool = True) -> None:
    _opt(p, "adapter", type=Path, required=adapter_required, metavar="DIR",
         help="adapter folder (a training run's output_dir)")
    _opt(p, "base_model", metavar="NAME_OR_PATH",
         help="override the base model named in run_config.yaml")
    _opt(p, "template", choices=["auto", "chat", "seed", "chatglm3", "chatglm2", "chatglm"],
         help="override the prompt template the adapter was trained with")
    _opt(p, "dtype", choices=["auto", "fp32", "bf16", "fp16"], help="override the dtype")
    _opt(p, "quantization", choices=["none", "4bit", "8bit"],
         help="override the base's quantisation (4bit/8bit need CUDA + bitsandbytes; without "
              "them the base loads in full precision)")
    _opt(p, "device", help="cuda, cuda:1, cpu, ... (default: cuda when available)")


def _gen_flags(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    _opt(p, "max_new_tokens", type=int, default=max_new_tokens,
         help=f"longest answer in tokens (default {max_new_tokens})")
    _opt(p, "temperature", type=float, default=0.0,
         help="sampling temperature; 0 (default) is greedy decoding")
    _opt(p, "top_p", type=float, default=0.9, help="nucleus sampling (with temperature > 0)")
    _opt(p, "repetition_penalty", type=float, default=1.0, help="1.0 (default) is off")


def _quiet_hf() -> None:
    """transformers' own progress bars (loading/writing shards) are noise next to ours."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _load(args: argparse.Namespace, base_only: bool = False):
    from ..inference import load_for_inference

    return load_for_inference(args.adapter, base_model=args.base_model, base_only=base_only,
                              template=args.template, dtype=args.dtype,
                              quantization=args.quantization, device=args.device)


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
    from ..chat import ChatCommandError

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
            say(f"[cut at max_new_tokens={session.settings.max_new_tokens}; "
                "/set max_new_tokens N for longer answers]\n")
        if reply.dropped_rounds:
            say(f"[the {reply.dropped_rounds} oldest round(s) no longer fit the model's context "
                "and were dropped]\n")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from ..chat import ChatSession, GenerationSettings

    _quiet_hf()
    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p,
                                  args.repetition_penalty)
    settings.check()
    if args.adapter is None and args.base_model is None:
        raise _usage("chat needs --adapter DIR (or --base_model NAME to chat with a base model)")
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
    from ..inference import generate_file, read_prompt_records

    _quiet_hf()
    im = _load(args, base_only=args.base_only)
    n = len(read_prompt_records(args.input, args.data_format)[1])  # fail fast on bad data
    if args.max_samples is not None:
        n = min(n, args.max_samples)
    with _progress(n, "generating") as bar:
        res = generate_file(im, args.input, args.output, data_format=args.data_format,
                            max_samples=args.max_samples, progress=bar.update,
                            max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                            batch_size=args.batch_size)
    cut = res.rows - res.stopped
    print(f"Wrote {res.rows} rows with `prediction` to {res.output_path} "
          f"({res.generated_tokens} tokens in {res.seconds:.1f}s with {_describe(im)})")
    if cut:
        print(f"  {cut} answer(s) were cut at max_new_tokens={args.max_new_tokens}; raise "
              "--max_new_tokens for complete answers.")
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
    rows = [("loss", "loss", 4), ("perplexity", "perplexity", 2), ("BLEU-4", "bleu-4", 2),
            ("ROUGE-1", "rouge-1", 2), ("ROUGE-2", "rouge-2", 2), ("ROUGE-L", "rouge-l", 2),
            ("answer tokens", "answer_tokens", 0)]
    lines = [f"{'metric':<14}" + "".join(f"{c:>12}" for c in cols)]
    for label, key, digits in rows:
        if all(key not in metrics[c] for c in cols):
            continue
        lines.append(f"{label:<14}" + "".join(
            f"{_fmt(metrics[c].get(key), digits):>12}" for c in cols))
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate
    from ..inference import read_prompt_records

    _quiet_hf()
    im = _load(args, base_only=args.base_only)
    _, records = read_prompt_records(args.data, args.data_format)
    n = sum(r["messages"][-1]["role"] == "assistant" for r in records)
    n = min(n, args.max_samples) if args.max_samples is not None else n
    runs = 2 if args.compare_base and im.has_adapter else 1
    with _progress(0 if args.loss_only else n * runs, "generating") as bar:
        res = evaluate(args.adapter, args.data, im=im, data_format=args.data_format,
                       max_samples=args.max_samples, compare_base=args.compare_base,
                       generation=not args.loss_only, max_new_tokens=args.max_new_tokens,
                       batch_size=args.batch_size, report_path=args.report,
                       progress=bar.update)
    rep = res.report
    print(f"Evaluated {_describe(im)} on {rep['samples']} sample(s) of {rep['data']}"
          + (f" ({rep['skipped_without_answer']} without an answer skipped)"
             if rep["skipped_without_answer"] else ""))
    print(format_eval_table(rep))
    if not args.loss_only:
        print("BLEU-4 and ROUGE are x100 (jieba words for Chinese, whitespace otherwise); "
              f"greedy decoding, max_new_tokens={args.max_new_tokens}.")
    print(f"Report with every prediction: {res.report_path}")
    return 0


# --------------------------------------------------------------------------- merge
def cmd_merge(args: argparse.Namespace) -> int:
    from ..merge import merge

    _quiet_hf()
    res = merge(args.adapter, args.output, dtype=args.dtype, overwrite=args.overwrite,
                check=not args.no_check, base_model=args.base_model,
                max_shard_size=args.max_shard_size, device=args.device)
    for note in res.notes:
        print(f"Note: {note}.")
    print(f"Merged {args.adapter} into {res.base_model} -> {res.output_dir} ({res.dtype}; "
          f"generation_config eos_token_id={res.stop_token_ids})")
    if res.max_abs_diff is not None:
        scale = f" (logits up to {res.max_abs_logit:.3g})" if res.max_abs_logit else ""
        print(f"Check: merged vs base+adapter logits over {res.check_tokens} tokens, largest "
              f"absolute difference {res.max_abs_diff:.3g}{scale}; same next token at "
              f"{100 * (res.top1_agreement or 0):.1f}% of positions")
        if res.dtype != "fp32":
            print(f"  ({res.dtype}: both models round differently, so logit differences of a "
                  "few units and different picks at near-ties are expected; --dtype fp32 gives "
                  "an exact comparison)")
    print(f"Load it anywhere, no peft needed: "
          f"AutoModelForCausalLM.from_pretrained({str(res.output_dir)!r})")
    return 0


# --------------------------------------------------------------------------- modules
def _targets_arg(values: list[str] | None) -> list[str] | str:
    if not values:
        return "auto"
    items = [v.strip() for item in values for v in item.split(",") if v.strip()]
    if len(items) == 1 and items[0] in ("auto", "all-linear"):
        return items[0]
    return items


def format_modules(rep: Any) -> str:
    def shapes(g: Any) -> str:
        s = ", ".join(f"{o}x{i}" for o, i in g.shapes[:3])
        return s + (f" (+{len(g.shapes) - 3})" if len(g.shapes) > 3 else "")

    head = (f"{'layer':<20}{'count':>6}  {'shape(s) out x in':<22}{'parameters':>14}  "
            f"{'auto':<5}{'LoRA r=' + str(rep.r):>14}")
    title = (f"{rep.model} (model_type {rep.model_type}): {rep.total_params:,} parameters; "
             "linear layers by name:")
    lines = [title, head, "-" * len(head)]
    for g in rep.groups:
        if g.targeted:
            lora = f"{g.lora_params:,}"
        elif g.output_head:
            lora = "head, tied" if g.tied else "head"
        else:
            lora = "-"
        if g.targeted and g.targeted < g.count:
            lora += f" ({g.targeted}/{g.count})"
        lines.append(f"{g.suffix:<20}{g.count:>6}  {shapes(g):<22}{g.params:>14,}  "
                     f"{'*' if g.auto else '':<5}{lora:>14}")
    share = 100 * rep.lora_params / max(rep.total_params, 1)
    lines.append("")
    lines.append(f"* = chosen by target_modules: auto ({', '.join(rep.auto_targets)})")
    spec = rep.target_spec if isinstance(rep.target_spec, str) else ",".join(rep.target_spec)
    lines.append(f"target_modules {spec} -> {', '.join(rep.targets)}")
    lines.append(f"LoRA at r={rep.r} adds {rep.lora_params:,} trainable parameters "
                 f"({share:.3f}% of the model's {rep.total_params:,}); each layer adds "
                 "r x (in + out)")
    return "\n".join(lines)


def cmd_modules(args: argparse.Namespace) -> int:
    from ..layers import list_modules

    rep = list_modules(args.model, r=args.r, target_modules=_targets_arg(args.target_modules),
                       trust_remote_code=args.trust_remote_code)
    print(format_modules(rep))
    return 0




def _usage(msg: str) -> Exception:
    from ..errors import ConfigError

    return ConfigError(msg)


# --------------------------------------------------------------------------- registration
def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    c = sub.add_parser("chat", help="chat with an adapter in the terminal (streams tokens)",
                       formatter_class=fmt, description=(
                           "Multi-turn chat in the adapter's training template. Commands: "
                           "/reset, /exit, /set NAME VALUE (e.g. /set temperature 0.7), "
                           "/settings, /system TEXT, /help. Works with piped stdin."))
    _load_flags(c, adapter_required=False)
    _opt(c, "base-only", action="store_true",
         help="chat with the base model alone (same template and settings), to compare")
    _opt(c, "system", help="system prompt (default: the one the adapter was trained with)")
    _gen_flags(c, 512)
    c.set_defaults(func=cmd_chat)

    g = sub.add_parser("generate", help="answer every record of a data file (batched)",
                       description="Batched generation over json/jsonl/csv/parquet files in "
                                   "alpaca, messages or ShareGPT form (answers optional: a "
                                   "record's final answer is dropped and its last user turn "
                                   "answered). Each row keeps its fields and gets `prediction`.")
    _load_flags(g)
    _opt(g, "input", type=Path, required=True, help="prompts file (.json/.jsonl/.csv/.parquet)")
    _opt(g, "output", type=Path, required=True,
         help="output file; format by suffix: .jsonl (default), .json, .csv, .parquet")
    _opt(g, "data_format", default="auto", choices=["auto", "alpaca", "messages", "sharegpt"])
    _opt(g, "batch_size", type=int, default=8, help="prompts per batch (default 8)")
    _opt(g, "max_samples", type=int, help="only the first N records")
    _opt(g, "base-only", action="store_true", help="generate with the base model alone")
    _gen_flags(g, 256)
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("eval", help="loss/perplexity and BLEU-4/ROUGE of an adapter on a file",
                       description="Loss and perplexity on the answer tokens (labels as in "
                                   "training) and, from greedy generation, BLEU-4 and "
                                   "ROUGE-1/2/L x100 (jieba words for Chinese).")
    _load_flags(e)
    _opt(e, "data", type=Path, required=True, help="data with answers (same formats as train)")
    _opt(e, "data_format", default="auto", choices=["auto", "alpaca", "messages", "sharegpt"])
    _opt(e, "report", type=Path, help="JSON report path (default ADAPTER/eval_report.json)")
    _opt(e, "compare-base", action="store_true",
         help="also measure the base model (adapter switched off)")
    _opt(e, "base-only", action="store_true", help="measure the base model alone")
    _opt(e, "max_samples", type=int, help="only the first N samples with answers")
    _opt(e, "batch_size", type=int, default=8)
    _opt(e, "max_new_tokens", type=int, default=128, help="longest generated answer (128)")
    _opt(e, "loss-only", action="store_true", help="skip generation (loss and perplexity only)")
    e.set_defaults(func=cmd_eval)

    m = sub.add_parser("merge", help="fold the adapter into the base: a standalone model folder",
                       description="Writes safetensors shards, config, tokenizer and a "
                                   "generation_config with the stop ids; loads with plain "
                                   "AutoModelForCausalLM.from_pretrained, no peft. An adapter "
                                   "trained on a 4-bit base is merged onto the base reloaded "
                                   "unquantised.")
    _opt(m, "adapter", type=Path, required=True, metavar="DIR")
    _opt(m, "output", type=Path, required=True, metavar="DIR", help="new model folder")
    _opt(m, "dtype", choices=["bf16", "fp16", "fp32"],
         help="weights dtype (default: the dtype the adapter was trained in)")
    _opt(m, "overwrite", action="store_true", help="replace an existing --output folder")
    _opt(m, "base_model", metavar="NAME_OR_PATH", help="override the base in run_config.yaml")
    _opt(m, "max_shard_size", default="2GB", help="largest safetensors shard (default 2GB)")
    _opt(m, "device", help="where to merge and check (default cpu)")
    _opt(m, "no-check", action="store_true",
         help="skip reloading the merged folder to compare its logits with base+adapter")
    m.set_defaults(func=cmd_merge)

    d = sub.add_parser("modules", help="a model's linear layers and what LoRA on them costs",
                       description="Linear layers grouped by name (as target_modules names "
                                   "them) with counts, shapes and parameters; `*` marks what "
                                   "target_modules: auto picks. No weights are loaded.")
    d.add_argument("--model", "--model_name", "--model-name", dest="model", required=True,
                   help="smollm2-135m-instruct, a model folder, or a hub id")
    d.add_argument("--r", "--rank", dest="r", type=int, default=8, help="LoRA rank (default 8)")
    _opt(d, "target_modules", nargs="+", metavar="NAME",
         help="auto (default), all-linear, or names (space- or comma-separated)")
    _opt(d, "trust_remote_code", type=_bool, nargs="?", const=True, default=False,
         metavar="true|false",
         help="allow the model folder's own Python code (only for models you trust)")
    d.set_defaults(func=cmd_modules)
