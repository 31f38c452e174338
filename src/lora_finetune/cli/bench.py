"""`lora-finetune benchmark` (also `bench-eval`): standard benchmarks through
lm-evaluation-harness on an adapter, and with --compare-base on its base (use/benchmark.py).

Everything that can be wrong is found before the model loads: the harness missing, the
settings, the adapter folder, task names, task data the machine cannot download.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .flags import bool_flag, load_flags, non_negative_int, opt, positive_int


def limit_arg(text: str) -> float | int:
    from ..use.benchmark import parse_limit

    try:
        return parse_limit(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


@contextlib.contextmanager
def harness_logging(verbose: bool) -> Iterator[None]:
    """The harness logs its machinery at INFO and WARNING (a pre-built model was passed, the demo
    task's custom loader, few-shot overrides it was asked for); only its errors concern the user
    unless -v. Its logger's level comes back afterwards."""
    logger = logging.getLogger("lm_eval")
    saved = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(saved)


def format_bench_table(rows: list[dict[str, Any]]) -> str:
    from ..use.benchmark import table

    cells = table(rows)
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = []
    for r in cells:
        first = f"{r[0]:<{widths[0]}}  {r[1]:<{max(widths[1], 6)}}"
        rest = "".join(f"{c:>{w + 3}}" for c, w in zip(r[2:], widths[2:]))
        lines.append((first + rest).rstrip())
    return "\n".join(lines)


def cmd_benchmark(args: argparse.Namespace) -> int:
    from ..run_record import open_adapter
    from ..use import benchmark as bench
    from .use import _describe, _load, _quiet_hf

    _quiet_hf()
    version = bench.require_harness()
    include = list(args.include_path or [])
    settings = bench.BenchmarkSettings(
        tasks=[t for t in (args.tasks or "").split(",")],
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        batch_size=args.batch_size,
        include_path=include,
        compare_base=args.compare_base,
        plain=args.plain,
    )
    if args.list_tasks is not None:
        if include:
            settings.tasks = ["-"]  # only the folders are checked when listing
            settings.check()
        with harness_logging(args.verbose):
            found = bench.list_tasks(bench.task_manager(include), args.list_tasks or None)
        for name, kind in found:
            print(f"{name}\t{kind}")
        print(f"{len(found)} task(s), group(s) and tag(s) (lm-eval {version})", file=sys.stderr)
        return 0
    settings.check()
    if not args.download_only:
        if args.adapter is None and args.base_model is None:
            raise ConfigError("benchmark needs --adapter DIR (or --base_model NAME to benchmark a base model alone)")
        if args.adapter is not None:
            open_adapter(args.adapter)  # not an adapter folder: said now, not after the tasks load
        bench.check_report_path(args.report)
    with harness_logging(args.verbose):
        print("Reading the task index ...", file=sys.stderr, flush=True)
        manager = bench.task_manager(include)
        bench.check_task_names(manager, settings.tasks)
        print(f"Loading the data of {', '.join(settings.tasks)} ...", file=sys.stderr, flush=True)
        loaded = bench.load_tasks(manager, settings.tasks)
        if args.download_only:
            hub_cache, ds_cache = bench.cache_folders()
            n = sum(len(p["tasks"]) for p in loaded.values())
            print(f"The data of {n} task(s) is in the caches: {hub_cache} and {ds_cache}")
            return 0
        im = _load(args, base_only=args.base_only)

        def say(label: str) -> None:
            print(f"Running the benchmark on the {label} ...", file=sys.stderr, flush=True)

        res = bench.benchmark(args.adapter, settings, im=im, loaded=loaded, report_path=args.report, on_pass=say)
    rep = res.report
    shots = sorted({v for v in rep["n_shot"].values() if isinstance(v, int)})
    print(
        f"Benchmarked {_describe(im)} with lm-eval {rep['lm_eval_version']}, prompts in the "
        f"{rep['prompt_format']} format, {'/'.join(map(str, shots)) or '0'}-shot"
        + (f", at most {settings.limit} item(s) per task" if settings.limit else "")
    )
    print(format_bench_table(res.rows))
    if any(r.get("beyond_2se") for r in res.rows):
        print("* the difference is more than two standard errors of the paired per-item difference.")
    elif any("difference" in r for r in res.rows):
        print("No difference is more than two standard errors of the paired per-item difference.")
    if res.report_path is not None:
        print(f"Report with the task versions and every number: {res.report_path}")
    else:
        print(f"The report could not be written ({res.report_error}); the table above is the result.")
    return 0


def register(sub: Any) -> None:
    b = sub.add_parser(
        "benchmark",
        aliases=["bench-eval"],
        help="standard benchmarks (C-Eval, CMMLU, MMLU, ...) through lm-evaluation-harness, adapter vs base",
        description="Runs EleutherAI's lm-evaluation-harness (pip install 'lora-finetune[bench]') on the adapter, "
        "applied without merging, on the base, dtype and quantisation of its run record, and with --compare-base on "
        "the same base with the adapter switched off. Prompts use the template the adapter was trained with (the "
        "harness's chat-template path for `chat`, ours for qa and ChatGLM; --plain for the harness's plain "
        "format). Hub tasks download their data once; `lora_demo_zh` ships with this package and runs offline.",
    )
    load_flags(b, adapter_required=False)
    opt(
        b,
        "tasks",
        metavar="NAMES",
        help="comma-separated task, group or tag names, or task YAML paths "
        "(e.g. ceval-valid,cmmlu,mmlu; lora_demo_zh offline)",
    )
    opt(
        b,
        "num_fewshot",
        type=non_negative_int,
        metavar="N",
        help="examples before each question (default: the task's own, else 0)",
    )
    opt(
        b,
        "limit",
        type=limit_arg,
        metavar="N",
        help="at most N items per task, or a share of each task below 1 (0.1 = 10%%)",
    )
    opt(b, "batch_size", type=positive_int, default=8, help="requests per forward pass (default 8)")
    opt(
        b,
        "include_path",
        type=Path,
        action="append",
        metavar="DIR",
        help="a folder of your own task YAMLs (repeatable)",
    )
    opt(b, "report", type=Path, help="JSON report path (default ADAPTER/bench_report.json)")
    bool_flag(b, "compare-base", help="also run the base with the adapter switched off (the base is loaded once)")
    bool_flag(b, "base-only", help="benchmark the base model alone")
    bool_flag(
        b, "plain", help="ask in the harness's plain text format (as model cards report), not the adapter's template"
    )
    bool_flag(b, "download-only", help="only download the tasks' data into the hub caches (on a machine with network)")
    opt(
        b, "list_tasks", nargs="?", const="", metavar="PATTERN", help="list the task names containing PATTERN, and exit"
    )
    b.set_defaults(func=cmd_benchmark)
