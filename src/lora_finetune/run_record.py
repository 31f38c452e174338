"""The record of a run, and the one way to open an adapter folder.

Every adapter folder holds `run_config.yaml`: the config the run used (every field of
`LoRAFinetuneConfig`) plus, under `resolved:`, what the run decided from it: the folder the base
was loaded from, its model_type, the template `auto` became, the quantisation and dtype actually
used, the LoRA targets, notes about fallbacks, the data file's sha256 and the library versions.
`RunRecord` is that file as a typed object, written and read here and nowhere else, so chat,
generate, eval, merge and serve need nothing but the folder.

`open_adapter(folder)` checks the folder (an adapter, complete per its manifest) and returns it
with its record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .choices import canonical_template
from .config import LoRAFinetuneConfig, build_config
from .errors import ConfigError, ModelError
from .folders import verify_manifest

RUN_CONFIG = "run_config.yaml"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
METRICS = "metrics.json"
LOSS_PLOT = "loss_curve.png"


@dataclass
class Resolved:
    """What a run decided from its config (the `resolved:` section of run_config.yaml)."""

    base_model: str | None = None
    """The folder the base was loaded from (the bundled model's or a converted ChatGLM's cache
    folder), or the hub id."""
    model_type: str | None = None
    template: str | None = None
    """The template name the run used: never `auto`, which was resolved once, at training."""
    quantization: str = "none"
    """What the base was actually loaded as (none when a 4/8-bit request fell back)."""
    dtype: str | None = None
    """torch dtype name of the compute dtype: float32, bfloat16, float16."""
    target_modules: list[str] = field(default_factory=list)
    eos_token: str | None = None
    notes: list[str] = field(default_factory=list)
    data_sha256: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys a newer version of this package wrote, kept as they are."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resolved:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        if known.get("template"):
            known["template"] = canonical_template(str(known["template"]))
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(out.pop("extra"))
        return out


@dataclass
class RunRecord:
    config: LoRAFinetuneConfig
    resolved: Resolved = field(default_factory=Resolved)

    # ------------------------------------------------------------------ reading and writing
    def save(self, path: Path) -> None:
        """Write run_config.yaml: the config's fields, then `resolved:`."""
        data = self.config.to_dict()
        data["resolved"] = self.resolved.to_dict()
        Path(path).write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        """Read a run_config.yaml; a damaged or hand-edited file gets an error naming it."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ModelError(
                f"{path} cannot be read ({type(e).__name__}: {e}). Restore it from the training run's output folder."
            ) from None
        if not isinstance(data, dict):
            raise ModelError(
                f"{path} is not a run record (a mapping of settings). Restore it from the training run's output folder."
            )
        resolved = data.pop("resolved", None) or {}
        try:
            config = build_config(data, source=str(path))
        except ConfigError as e:
            raise ModelError(
                f"{e}\n(This is the record of a training run; restore it, or pass "
                "the settings it should hold on the command line.)"
            ) from None
        return cls(config, Resolved.from_dict(resolved if isinstance(resolved, dict) else {}))

    @classmethod
    def read(cls, folder: Path) -> RunRecord | None:
        """The record in `folder`, or None for a folder without one (another tool's adapter)."""
        path = Path(folder) / RUN_CONFIG
        return cls.load(path) if path.is_file() else None

    # ------------------------------------------------------------------ what later commands need
    @property
    def template(self) -> str:
        """The template the adapter was trained with (`auto` only in records of old runs that
        did not store the resolved name)."""
        return self.resolved.template or canonical_template(self.config.template)

    @property
    def quantization(self) -> str:
        """The base's quantisation during training (what was used, not what was asked)."""
        return self.resolved.quantization or self.config.quantization

    def base_to_load(self) -> str:
        """The base to load: the folder the run trained on when it still exists, else the
        configured model_name (bundled alias, folder or hub id, resolved again)."""
        base = self.resolved.base_model
        if base and Path(str(base)).is_dir():
            return str(base)
        return str(self.config.model_name or base)


@dataclass
class AdapterFolder:
    """A checked adapter folder and its run record (None when another tool made it)."""

    path: Path
    record: RunRecord | None

    @property
    def has_tokenizer(self) -> bool:
        return (self.path / "tokenizer_config.json").is_file()

    def base_to_load(self, override: str | None = None) -> str:
        if override:
            return override
        if self.record is None:
            raise ModelError(f"No base model: {self.path} has no {RUN_CONFIG}. Pass --base_model NAME_OR_PATH.")
        return self.record.base_to_load()


def open_adapter(path: str | Path) -> AdapterFolder:
    """Check that `path` is a complete adapter folder and read its run record."""
    path = Path(path)
    if not (path / ADAPTER_CONFIG).is_file():
        raise ModelError(
            f"{path} is not an adapter folder (no {ADAPTER_CONFIG}). Point --adapter "
            "at the output_dir of a training run."
        )
    verify_manifest(path)
    return AdapterFolder(path, RunRecord.read(path))


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AdapterFolder",
    "LOSS_PLOT",
    "METRICS",
    "RUN_CONFIG",
    "Resolved",
    "RunRecord",
    "open_adapter",
]
