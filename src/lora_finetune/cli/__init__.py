"""`lora-finetune VERB ...`: verbs mapped to functions. The CLI package is the only place that
prints or exits.

Every `LoraFinetuneError` becomes its message on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import import_module
from pathlib import Path

from ..allocator import ALLOCATOR_ENV, find_tcmalloc, names_allocator
from ..errors import LoraFinetuneError

log = logging.getLogger(__name__)


class _NotAboutTheRun(logging.Filter):
    """transformers lines about its own machinery, not the user's run."""

    NOISE = ("mtime may not be reliable",)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.NOISE)


def _setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[lora-finetune] %(message)s"))
    root = logging.getLogger("lora_finetune")
    root.handlers[:] = [handler]
    # Under a launcher every process runs this; the others' progress lines repeat rank 0's, so
    # they say only what goes wrong (-v: everything, from every rank).
    follower = os.environ.get("RANK", "0") != "0"
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if follower else logging.INFO)
    root.propagate = False
    quiet_library_logs()
    # (A logger's filters see only its own records, so the filter goes on the logger that emits.)
    logging.getLogger("transformers.trainer_utils").addFilter(_NotAboutTheRun())
    # transformers' own warnings stay, its info chatter goes.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet_library_logs() -> None:
    """Libraries' log lines about their own machinery, which no user of this tool acts on:
    bitsandbytes logs on import and per call on CPU (dtype casts inside its int8 matmul, a CPU
    kernel it would download from the Hub), and `kernels`, which transformers installs and
    bitsandbytes asks for that kernel, says offline that it skips its publisher check. Their
    errors still show."""
    for name in ("bitsandbytes", "kernels"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: `--r 8` must reach the config as `r`, not be taken for `--resume`.
    p = argparse.ArgumentParser(
        prog="lora-finetune",
        allow_abbrev=False,
        description="LoRA / QLoRA fine-tuning for ChatGLM and Qwen-class causal language models.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch (default: $LORA_FINETUNE_THREADS, else the cores the machine's other "
        "work leaves free: on a busy machine fewer threads are faster, since threads that wait on each other "
        "slow small matrix products down)",
    )
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for module in VERB_MODULES:
        import_module(f".{module}", __name__).register(sub)
    return p


# Each module here has `register(subparsers)`, adding its verbs with `set_defaults(func=...)`;
# `func(args) -> int` does the work. Imports inside the functions keep `--help` fast.
VERB_MODULES: list[str] = ["train", "use", "bench", "tools", "convert", "serve", "export", "webui"]


def main(argv: list[str] | None = None) -> int:
    as_program = argv is None  # not called from Python (tests, the web UI): may re-exec itself
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if as_program and args.verb == "train":
        preload_tcmalloc(argv)  # returns only when it does not re-exec
    _setup_logging(args.verbose)
    _setup_threads(args.threads)
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        if getattr(args, "takes_overrides", False):
            args.overrides = rest
        elif rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args.func(args)
    except LoraFinetuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the safety net: a bug, or a failure we do not know yet
        where = _write_crash_log(args.verb, argv)
        print(
            f"error: `lora-finetune {args.verb}` failed unexpectedly ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else 'no message'}). The full traceback is in "
            f"{where}; please include it when you report this.",
            file=sys.stderr,
        )
        return 1


def preload_tcmalloc(argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run `train` again under tcmalloc when the system has it (os.execve: same process id).

    Why: CPU training frees and re-allocates the same GiBs every step; glibc's malloc returns
    them to the kernel and faults them back in, tcmalloc keeps them. Measured on the long-batch
    job (bench/RESULTS.md): 14% more tokens/s and a 35% lower peak RSS. Skipped when
    LORA_FINETUNE_ALLOCATOR=system, when LD_PRELOAD already names an allocator, off Linux, or
    when no tcmalloc is installed (then `pip`-only machines train exactly as before)."""
    env = dict(os.environ if env is None else env)
    choice = env.get(ALLOCATOR_ENV, "auto").strip().lower()
    if choice != "auto" or sys.platform != "linux" or names_allocator(env.get("LD_PRELOAD", "")):
        return
    lib = find_tcmalloc()
    if lib is None:
        return
    env["LD_PRELOAD"] = f"{lib} {env['LD_PRELOAD']}".strip() if env.get("LD_PRELOAD") else lib
    env[ALLOCATOR_ENV] = "tcmalloc"  # the re-executed process does not try again
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, "-m", "lora_finetune", *argv], env)
    except OSError:  # cannot start Python again (odd installs): train with glibc's malloc
        return


def choose_threads(cpus: int, load: float) -> int:
    """CPU threads for torch: the cores other work leaves free, at least one.

    Measured (bench/RESULTS.md): on 2 cores with another job running (load ~2.3), generating
    with 1 thread ran 2.3x faster than with torch's default of 2, because threads that wait on
    each other slow small matrix products down; on an idle machine every core helps."""
    return max(1, min(cpus, int(cpus - load + 0.5)))


def _busy_cores(seconds: float = 0.2) -> float:
    """How many cores other work keeps busy right now (/proc/stat sampled over `seconds`; the
    load average would still count a job that ended a minute ago)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)  # total, idle + iowait

    try:
        total0, idle0 = sample()
        import time

        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    cpus = os.cpu_count() or 1
    return cpus * (1 - (idle1 - idle0) / max(1, total1 - total0))


def _setup_threads(threads: int | None) -> None:
    if threads is None:
        env = os.environ.get("LORA_FINETUNE_THREADS", "").strip()
        if env and not env.isdigit():
            log.warning("LORA_FINETUNE_THREADS=%r is not a number of threads; choosing automatically", env)
        threads = int(env) if env.isdigit() else 0
    if threads <= 0:  # automatic: what the machine's other work leaves free
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        load = _busy_cores()
        threads = choose_threads(cpus, load)
        if threads < cpus:
            # debug: a line on every command would be noise; `-v` shows it
            log.debug(
                "using %d of %d CPU threads: other work keeps %.1f cores busy; --threads N to choose",
                threads,
                cpus,
                load,
            )
    import torch

    torch.set_num_threads(threads)


def _write_crash_log(verb: str, argv: list[str]) -> str:
    """Write the current traceback to a log file and return its path (or say where it went)."""
    import tempfile
    import time
    import traceback

    from ..config import default_cache_dir

    text = f"lora-finetune {' '.join(argv)}\n\n{traceback.format_exc()}"
    name = f"crash-{verb}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (default_cache_dir() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
            return str(folder / name)
        except OSError:
            continue
    sys.stderr.write(text)  # nowhere to write: the traceback goes to the terminal after all
    return "the output above"


if __name__ == "__main__":
    sys.exit(main())
