"""Every `lora-finetune ...` command line shown in the README and docs/ parses with the real CLI.

The command lines are taken from fenced code blocks (bash, sh, shell, console and plain ones),
joined across `\\` continuations, with trailing `# comments`, a `$ ` prompt and leading
`VAR=value` assignments removed; `lora-finetune` may also follow `&&`, `;` or `|`. A table cell
that is nothing but a `lora-finetune VERB ARGS...` code span (the README's table of verbs) is
one too, while other inline code (`lora-finetune data FILE [--model M]`) is prose. Each is parsed
by `build_parser()` as `main()` parses it: for `train`, what argparse leaves over are config
overrides, checked by the config's own code (known keys and aliases, values of the right type);
for every other verb a leftover is an error. So the docs cannot drift from the CLI.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console", "zsh"}
SEPARATORS = {"&&", "||", ";", "|"}
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
TABLE_CELL_COMMAND = re.compile(r"`(lora-finetune \S+ [^`]+)`")  # a bare `lora-finetune VERB` names the verb
MIN_COMMANDS = 70  # the extractor must not silently find nothing (there are more than this)
README_MAX_LINES = 260


@dataclass(frozen=True)
class Command:
    file: str
    line: int
    argv: tuple[str, ...]  # the arguments after `lora-finetune`

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: lora-finetune {shlex.join(self.argv)}"


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) for each line in a shell-like fenced block, `\\` joined."""
    out: list[tuple[int, str]] = []
    lang: str | None = None  # None: outside a fence
    pending: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            lang = stripped[3:].strip().lower() if lang is None else None
            pending = None
            continue
        if lang is None or lang not in SHELL_BLOCKS:
            continue
        if pending is not None:
            start, line = pending[0], pending[1] + " " + stripped
            pending = None
        else:
            start = number
        if line.rstrip().endswith("\\"):
            pending = (start, line.rstrip()[:-1])
            continue
        out.append((start, line))
    return out


def commands_on_line(line: str) -> list[tuple[str, ...]]:
    """The arguments of each `lora-finetune` command on one logical shell line."""
    line = line.strip()
    if line.startswith("$ "):
        line = line[2:]
    if "lora-finetune" not in line:
        return []
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:  # output or prose with an unbalanced quote: not a command line
        return []
    found, segment = [], []
    for token in [*tokens, "&&"]:
        if token not in SEPARATORS:
            segment.append(token)
            continue
        while segment and ENV_ASSIGNMENT.match(segment[0]):
            segment.pop(0)
        if segment and segment[0] == "lora-finetune":
            found.append(tuple(segment[1:]))
        segment = []
    return found


def table_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) for each table cell outside fences that is one `lora-finetune` span."""
    out: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.lstrip().startswith("|"):
            for cell in line.strip().strip("|").split("|"):
                match = TABLE_CELL_COMMAND.fullmatch(cell.strip())
                if match:
                    out.append((number, match.group(1)))
    return out


def commands_in(path: Path) -> list[Command]:
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    text = path.read_text(encoding="utf-8")
    lines = sorted([*shell_lines(text), *table_commands(text)])
    return [Command(name, number, argv) for number, line in lines for argv in commands_on_line(line)]


ALL_COMMANDS = [c for page in PAGES for c in commands_in(page)]


def parse_problem(argv: tuple[str, ...]) -> str | None:
    """Why `lora-finetune ARGV` would not parse, or None when it does."""
    from lora_finetune.cli import build_parser
    from lora_finetune.config import build_config, parse_overrides
    from lora_finetune.errors import ConfigError

    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            args, rest = parser.parse_known_args(list(argv))
    except SystemExit as e:
        if e.code == 0 and ("-h" in argv or "--help" in argv):
            return None  # `lora-finetune train --help`
        return err.getvalue().strip() or f"argparse exited with {e.code}"
    if args.verb is None:
        return "no verb"
    if not getattr(args, "takes_overrides", False):
        return f"unrecognized arguments: {' '.join(rest)}" if rest else None
    try:  # train: the leftovers are settings, checked as `lora-finetune train` checks them
        build_config(parse_overrides(rest), source="the command line")
    except ConfigError as e:
        return str(e)
    return None


def test_the_extractor_finds_the_commands():
    assert len(ALL_COMMANDS) >= MIN_COMMANDS, [str(c) for c in ALL_COMMANDS]
    files = {c.file for c in ALL_COMMANDS}
    assert "README.md" in files and len(files) >= 8, files


def test_the_extractor_handles_shell_syntax(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text lora-finetune chat --adapter prose\n"
        "```bash\n"
        "lora-finetune train --steps 3 \\\n"
        "    --r 4   # a comment\n"
        "$ lora-finetune modules --model M\n"
        "HF_HUB_OFFLINE=1 A=b lora-finetune data FILE\n"
        "make demo && lora-finetune chat --adapter DIR\n"
        'pip install "lora-finetune[ui]"\n'
        "```\n"
        "```yaml\n"
        "lora-finetune: not a command\n"
        "```\n"
        "```\n"
        "lora-finetune estimate --model M\n"
        "```\n"
        "| verb | example |\n"
        "| `merge` | `lora-finetune merge --adapter DIR --output OUT` |\n"
        "| `data` | `lora-finetune data FILE` and more |\n"
        "| the verb | `lora-finetune modules` |\n",
        encoding="utf-8",
    )
    got = [(c.line, list(c.argv)) for c in commands_in(page)]
    assert got == [
        (3, ["train", "--steps", "3", "--r", "4"]),
        (5, ["modules", "--model", "M"]),
        (6, ["data", "FILE"]),
        (7, ["chat", "--adapter", "DIR"]),
        (14, ["estimate", "--model", "M"]),
        (17, ["merge", "--adapter", "DIR", "--output", "OUT"]),
    ]


def test_parse_problem_catches_drift():
    assert parse_problem(("train", "--steps", "3", "--lora_rank", "4")) is None
    assert "lora_rnk" in parse_problem(("train", "--lora_rnk", "4"))
    assert parse_problem(("chat", "--adapter", "DIR", "--no-such-flag")) is not None
    assert parse_problem(("no-such-verb",)) is not None
    assert parse_problem(("train", "--help")) is None


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
def test_doc_command_parses(command: Command):
    problem = parse_problem(command.argv)
    assert problem is None, f"{command}\n  does not parse: {problem}"


def test_the_readme_is_a_first_read():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move reference text to docs/"


def test_every_docs_page_is_linked_from_the_readme_and_the_index():
    readme = README.read_text(encoding="utf-8")
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name == "README.md":
            continue
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
        assert f"({page.name})" in index, f"docs/README.md does not list {page.name}"
