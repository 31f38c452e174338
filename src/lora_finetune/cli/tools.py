"""Planning verbs: `estimate` (peak GPU memory of a training run from config.json alone).

This module and the rest of the CLI package are the only places that print.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..choices import MERGE_DTYPES, QUANTIZATIONS
from ..errors import ConfigError
from .flags import bool_flag, opt


def _targets(text: str) -> Any:
    if text in ("auto", "all-linear"):
        return text
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_estimate(args: argparse.Namespace) -> int:
    from ..tools.estimate import Setup, estimate_memory, format_estimate, load_shape, parse_size, suggest

    shape = load_shape(args.model, trust_remote_code=args.trust_remote_code)
    setup = Setup(
        quantization=args.quantization,
        dtype=args.dtype,
        r=args.r,
        target_modules=args.target_modules,
        batch_size=args.batch_size,
        max_length=args.max_length,
        gradient_checkpointing=args.gradient_checkpointing,
        optimizer=args.optimizer,
        dropout=args.dropout,
        device=args.device,
        liger=args.use_liger,
    )
    est = estimate_memory(shape, setup)
    budget = parse_size(args.budget) if args.budget else None
    fits = suggest(shape, setup, budget) if budget is not None else []
    if args.json:

        def as_dict(e):
            return {
                "setup": vars(e.setup),
                "weights": e.weights,
                "lora": e.lora,
                "activations": e.activations,
                "logits": e.logits,
                "other": e.other,
                "overhead": e.overhead,
                "peak_allocated": e.peak_allocated,
                "total": e.total,
                "lora_params": e.lora_params,
                "tokens": e.tokens,
                "targets": e.targets,
                "notes": e.notes,
            }

        print(
            json.dumps(
                {
                    "model": {
                        "model_type": shape.model_type,
                        "parameters": shape.total_params,
                        "layers": shape.num_layers,
                        "vocab_size": shape.vocab_size,
                    },
                    "estimate": as_dict(est),
                    "budget": budget,
                    "suggestions": [{"change": why, **as_dict(e)} for why, e in fits],
                },
                indent=2,
                default=str,
            )
        )
        return 0
    print(
        f"{args.model}: {shape.model_type}, {shape.total_params / 1e9:.2f}B parameters, "
        f"{shape.num_layers} layers, hidden {shape.hidden_size}, vocab {shape.vocab_size:,}"
    )
    print(f"LoRA r={setup.r} on {', '.join(est.targets)} ({est.lora_params:,} parameters)")
    print(f"\nPeak memory of a training step ({setup.describe()}):")
    print(format_estimate(est))
    for note in est.notes:
        print(f"  note: {note}")
    if budget is not None:
        gib = budget / 1024**3
        if fits and fits[0][0] == "as asked":
            print(f"\nFits the {gib:.0f} GiB budget as asked.")
        elif fits:
            print(f"\nDoes not fit {gib:.0f} GiB; settings that do (smallest change first):")
            for why, e in fits:
                print(f"  - {why}: {e.total / 1024**3:.2f} GiB")
        else:
            print(
                f"\nNothing we tried fits {gib:.0f} GiB (down to batch 1, max_length 256, "
                "4-bit, gradient checkpointing). Use a smaller model or a larger GPU."
            )
    print(
        "\nCalibrated against measured peaks (bench/RESULTS.md): on a CPU within -3% to +5%, on an H200 "
        "within -4% to +17% (GPU estimates err high); expect +-20% on other models and settings."
    )
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

    head = (
        f"{'layer':<20}{'count':>6}  {'shape(s) out x in':<22}{'parameters':>14}  "
        f"{'auto':<5}{'LoRA r=' + str(rep.r):>14}"
    )
    title = f"{rep.model} (model_type {rep.model_type}): {rep.total_params:,} parameters; linear layers by name:"
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
        lines.append(
            f"{g.suffix:<20}{g.count:>6}  {shapes(g):<22}{g.params:>14,}  {'*' if g.auto else '':<5}{lora:>14}"
        )
    share = 100 * rep.lora_params / max(rep.total_params, 1)
    lines.append("")
    lines.append(f"* = chosen by target_modules: auto ({', '.join(rep.auto_targets)})")
    spec = rep.target_spec if isinstance(rep.target_spec, str) else ",".join(rep.target_spec)
    lines.append(f"target_modules {spec} -> {', '.join(rep.targets)}")
    lines.append(
        f"LoRA at r={rep.r} adds {rep.lora_params:,} trainable parameters "
        f"({share:.3f}% of the model's {rep.total_params:,}); each layer adds "
        "r x (in + out)"
    )
    return "\n".join(lines)


def cmd_modules(args: argparse.Namespace) -> int:
    from ..tools.modules import list_modules

    rep = list_modules(
        args.model, r=args.r, target_modules=_targets_arg(args.target_modules), trust_remote_code=args.trust_remote_code
    )
    print(format_modules(rep))
    return 0


def register(sub: Any) -> None:
    e = sub.add_parser(
        "estimate",
        help="predict peak GPU memory of a training run (from config.json alone)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Predict the peak memory of one LoRA/QLoRA training step from a model's "
        "config.json (no weights are read): weights, LoRA parameters with gradients "
        "and optimizer state, activations and logits. With --budget, suggest "
        "settings that fit.",
        epilog="examples:\n"
        "  lora-finetune estimate --model Qwen/Qwen3-0.6B --batch_size 8 --max_length 512\n"
        "  lora-finetune estimate --model path/to/config.json --quantization 4bit "
        "--budget 24GB",
    )
    opt(
        e,
        "model",
        required=True,
        metavar="NAME|FOLDER|CONFIG.JSON",
        help="hub id (cached), model folder, config.json, or smollm2-135m-instruct",
    )
    opt(e, "quantization", default="none", choices=QUANTIZATIONS)
    opt(e, "dtype", default="bf16", choices=MERGE_DTYPES, help="compute dtype (default bf16)")
    opt(e, "r", type=int, default=8, help="LoRA rank (default 8)")
    opt(
        e,
        "target_modules",
        type=_targets,
        default="auto",
        help="auto (default), all-linear, or comma-separated layer names",
    )
    opt(e, "batch_size", type=int, default=2, help="samples per step (default 2)")
    opt(
        e,
        "max_length",
        type=int,
        default=768,
        help="longest sample in tokens; the estimate pads every sample to it (default 768)",
    )
    bool_flag(e, "gradient_checkpointing", help="recompute activations in the backward pass")
    opt(
        e,
        "optimizer",
        default="adamw",
        choices=["adamw", "adamw_8bit", "sgd"],
        help="adamw: two fp32 moments per LoRA parameter (default)",
    )
    opt(e, "dropout", type=float, default=0.05, help="LoRA dropout (default 0.05)")
    bool_flag(e, "use_liger", help="liger-kernel fused linear+cross-entropy (no full logits)")
    opt(e, "device", default="cuda", choices=["cuda", "cpu"], help="cuda (default) or cpu (RSS, fp32)")
    opt(e, "budget", metavar="SIZE", help="memory available, e.g. 24GB (GB = GiB here)")
    bool_flag(e, "trust_remote_code", help="allow the model folder's own Python code (only for models you trust)")
    bool_flag(e, "json", help="machine-readable output")
    e.set_defaults(func=cmd_estimate)

    d = sub.add_parser(
        "modules",
        help="a model's linear layers and what LoRA on them costs",
        description="Linear layers grouped by name (as target_modules names "
        "them) with counts, shapes and parameters; `*` marks what "
        "target_modules: auto picks. No weights are loaded.",
    )
    d.add_argument(
        "--model",
        "--model_name",
        "--model-name",
        dest="model",
        required=True,
        help="smollm2-135m-instruct, a model folder, or a hub id",
    )
    d.add_argument("--r", "--rank", dest="r", type=int, default=8, help="LoRA rank (default 8)")
    opt(
        d,
        "target_modules",
        nargs="+",
        metavar="NAME",
        help="auto (default), all-linear, or names (space- or comma-separated)",
    )
    bool_flag(d, "trust_remote_code", help="allow the model folder's own Python code (only for models you trust)")
    d.set_defaults(func=cmd_modules)
    _register_data(sub)


# --------------------------------------------------------------------------- data
def format_data_report(rep: Any) -> str:
    from ..choices import METHOD_KIND
    from ..data import KIND_NAMES

    methods = ", ".join(m for m, k in METHOD_KIND.items() if k == rep.kind)
    lines = [f"{rep.label}: {rep.records} records ({', '.join(f'{n} {f}' for f, n in rep.formats.items())})"]
    lines.append(f"  {KIND_NAMES[rep.kind]}: train with method {methods}")
    if rep.labels:
        lines.append(f"  {rep.labels['desirable']} desirable, {rep.labels['undesirable']} undesirable answers")
    if rep.token_lengths:
        t = rep.token_lengths
        learned = "tokens learned" if rep.kind == "text" else "answer tokens learned"
        per = "document (BOS, text, EOS)" if rep.kind == "text" else f"sample (template {rep.template})"
        lines.append(
            f"  tokens per {per}: min {t['min']}, median {t['median']}, "
            f"p95 {t['p95']}, max {t['max']}; {rep.answer_tokens:,} {learned}, "
            f"{rep.prompt_tokens:,} prompt tokens masked"
        )
    if rep.kind == "text":
        lines.append(f"  {rep.too_long} documents are longer than max_length={rep.max_length}: cut into pieces")
    else:
        lines.append(
            f"  {rep.too_long} would be dropped at max_length={rep.max_length}"
            + (f" (raise max_length to {rep.token_lengths['max']} to keep all)" if rep.too_long else "")
        )
    lines.append(f"  {rep.duplicates} duplicates, {rep.multi_turn} multi-turn, {rep.no_answer} without answer tokens")
    lines += [f"  warning: {w}" for w in rep.warnings]
    for title, segments in zip(rep.sample_titles, rep.samples):
        lines.append(f"  {title} (learned text in [[ ]]):")
        text = "".join(f"[[{t}]]" if learn else t for t, learn in segments)
        lines += ["    " + line for line in text.splitlines()]
    return "\n".join(lines)


def cmd_data(args: argparse.Namespace) -> int:
    from ..tools.datacheck import check_data, write_demo

    if args.write_demo:
        path = write_demo(args.write_demo, overwrite=args.overwrite, kind=args.kind)
        print(f"Wrote the demo data ({args.kind}) to {path}")
        if not args.data_path:
            return 0
    if not args.data_path:
        raise ConfigError("lora-finetune data: give a data file (or folder) to check, or --write-demo FILE.")
    rep = check_data(
        args.data_path,
        dataset=args.dataset,
        data_format=args.data_format,
        model=args.model,
        template=args.template,
        max_length=args.max_length,
        show=args.show,
    )
    print(format_data_report(rep))
    return 0


def _register_data(sub: Any) -> None:
    from ..choices import DATA_FORMATS, DATA_KINDS, TEMPLATE_ALIASES, TEMPLATES

    d = sub.add_parser(
        "data",
        help="check a dataset as training would see it (no training); write the demo data",
        description="Read, normalise and encode a dataset with the model's tokenizer and template, "
        "exactly as training does, and report records, formats, token lengths, what max_length "
        "would drop, duplicates, and the first samples with the learned part marked.",
    )
    d.add_argument(
        "data_path", nargs="?", help="a data file, a datasets folder, a hub dataset id, or LLaMA-Factory's data folder"
    )
    opt(d, "dataset", help="a dataset name in LLaMA-Factory's dataset_info.json")
    opt(d, "data_format", default="auto", choices=DATA_FORMATS)
    opt(
        d, "model", default="smollm2-135m-instruct", help="whose tokenizer and template count tokens (default: bundled)"
    )
    opt(d, "template", default="auto", choices=[*TEMPLATES, *TEMPLATE_ALIASES])
    opt(d, "max_length", type=int, default=768)
    opt(d, "show", type=int, default=2, help="how many rendered samples to show (default 2)")
    opt(d, "write_demo", metavar="FILE", help="write demo data to FILE (.jsonl or .json)")
    opt(
        d,
        "kind",
        default="instruction",
        choices=DATA_KINDS,
        help="with --write-demo: instruction (the 20 samples, default), preference (30 Chinese pairs), "
        "kto (those answers labelled) or text",
    )
    bool_flag(d, "overwrite", help="replace an existing --write-demo file")
    d.set_defaults(func=cmd_data)
