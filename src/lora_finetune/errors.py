"""The one error type users see.

Everything the package raises on bad input (config, data, model paths, targets) is a
`LoraFinetuneError`: one paragraph that names the file, the line or record, the field and the
fix. The CLI prints its message and exits with code 2; anything else is a bug in this package.
"""

from __future__ import annotations


class LoraFinetuneError(Exception):
    """A problem the user can fix. `str(err)` is the whole message, ready to print."""

    exit_code = 2


class ConfigError(LoraFinetuneError):
    """A bad config file, override or value."""


class DataError(LoraFinetuneError):
    """A data file that cannot be read or used as training data."""


class ModelError(LoraFinetuneError):
    """A model that cannot be found, loaded or fitted with LoRA as asked."""


class TrainingError(LoraFinetuneError):
    """A run that stopped for a reason the user can act on (NaN loss, out of memory, ...)."""


def listing(names: list[str], limit: int = 12) -> str:
    """`a, b, c and 9 more`: long name lists in messages stay one readable line."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


MAX_LISTED = 20
"""How many problems a message lists before it only counts the rest."""


def problem_list(problems: list[str], limit: int = MAX_LISTED) -> str:
    """Problems as an indented list, the first `limit` in full and then a count."""
    lines = [f"  - {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)
