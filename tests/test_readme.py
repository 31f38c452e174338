"""Every Python snippet in the README and docs/ runs, as written, in a scratch folder.

The snippets (the Python API in docs/using.md, adding a model family in docs/development.md) name
files a reader would have (`my_config.yaml`, `prompts.jsonl`, `test.jsonl`); the test writes small
ones, with a tiny model standing in for the reader's, and runs the blocks in order in one
namespace (docs/using.md's second block uses `model` from its first).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The README first, then the docs pages, each page's blocks in order.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def all_blocks() -> list[tuple[str, str]]:
    """(where, code) for every ```python block of the README and the docs pages, in order."""
    out = []
    for page in PAGES:
        blocks = python_blocks(page.read_text(encoding="utf-8"))
        out += [(f"{page.relative_to(ROOT)} python block {i + 1}", b) for i, b in enumerate(blocks)]
    return out


def test_the_docs_have_python_snippets():
    where = [w for w, _ in all_blocks()]
    assert len(where) >= 3, where
    assert any(w.startswith("docs/using.md") for w in where), where


def test_readme_python_snippets_run(tiny_qwen3, tmp_path, monkeypatch):
    from lora_finetune.config import default_cache_dir

    blocks = all_blocks()
    if (
        any("smollm2-135m-instruct" in b for _, b in blocks)
        and not (default_cache_dir() / "models" / "smollm2-135m-instruct" / "config.json").is_file()
    ):
        pytest.skip("the bundled model is not converted yet (`make install` does it)")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_name": str(tiny_qwen3),
                "output_dir": "outputs/my_run",
                "batch_size": 2,
                "learning_rate": 1e-3,
                "save_steps": 1000,
                "eval_steps": 1000,
                "r": 4,
                "alpha": 8,
            }
        )
    )
    rows = [
        {"instruction": q, "input": "", "output": a}
        for q, a in [("中国的首都是哪里？", "北京。"), ("一周有几天？", "七天。")]
    ]
    for name in ("prompts.jsonl", "test.jsonl"):
        (tmp_path / name).write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    from lora_finetune.models.families import known_families, unregister_family

    before = {f.name for f in known_families()}
    namespace: dict = {}
    try:
        for where, block in blocks:
            exec(compile(block, where, "exec"), namespace)
    finally:  # the "adding a model family" example registers one; leave the table as it was
        for family in known_families():
            if family.name not in before:
                unregister_family(family.name)
    assert (tmp_path / "outputs" / "my_run" / "adapter_model.safetensors").is_file()
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "merged" / "my_model" / "config.json").is_file()
    assert namespace["result"].metrics["steps"] == 100
    assert len(namespace["outs"]) == 1 and "text" in namespace["outs"][0]
    assert "mymodel" not in {f.name for f in known_families()}
