"""The LoRA GGUF's layout (what llama.cpp's convert_lora_to_gguf writes), the Ollama Modelfile
and its Go template, the Jinja template derived for non-chat templates, and the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from lora_finetune.cli import main
from lora_finetune.export import export_model
from lora_finetune.export.chat_format import (
    go_template,
    jinja_template,
    measure,
    render_jinja,
    render_ours,
    sample_conversations,
)


def _fields(path):
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return reader, {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_lora_gguf_layout(export_adapters, tmp_path):
    from gguf import dequantize
    from safetensors.torch import load_file

    from lora_finetune.export.gguf_model import permute_rows

    adapter = export_adapters["llama"]
    res = export_model(adapter, tmp_path / "o", format="gguf-lora", outtype="f16")
    assert res.files == ["adapter-lora-f16.gguf"]
    reader, meta = _fields(tmp_path / "o" / res.files[0])
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["general.architecture"] == "llama"
    assert meta["adapter.lora.alpha"] == pytest.approx(cfg["lora_alpha"])
    tensors = {t.name: t for t in reader.tensors}
    peft = load_file(str(adapter / "adapter_model.safetensors"))
    # every adapted linear layer of both blocks, as <gguf weight name>.lora_a / .lora_b
    assert len(tensors) == len(peft) == 2 * 7 * 2
    a = peft["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].numpy()
    b = peft["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"].numpy()
    ga, gb = tensors["blk.1.attn_q.weight.lora_a"], tensors["blk.1.attn_q.weight.lora_b"]
    # ggml's shape is (ne0, ne1): lora_a is [in, r] there, i.e. peft's [r, in] untransposed
    assert list(ga.shape) == [a.shape[1], a.shape[0]] and list(gb.shape) == [b.shape[1], b.shape[0]]
    got_a = dequantize(ga.data, ga.tensor_type).reshape(a.shape)
    got_b = dequantize(gb.data, gb.tensor_type).reshape(b.shape)
    np.testing.assert_allclose(got_a, a, atol=1e-3)
    # Q rows are permuted like the base weight (llama.cpp's rotary layout): in lora_b
    np.testing.assert_allclose(got_b, permute_rows(b, 4), atol=1e-3)


def test_ollama_folder_and_modelfile(export_adapters, tmp_path, capsys):
    code = main(
        ["export", "--adapter", str(export_adapters["qwen3"]), "--output", str(tmp_path / "qw"), "--format", "ollama"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert f"ollama create qw -f {tmp_path / 'qw' / 'Modelfile'}" in out
    folder = tmp_path / "qw"
    assert sorted(p.name for p in folder.iterdir()) == [
        "Modelfile",
        "export_info.json",
        "manifest.json",
        "model-f16.gguf",
    ]
    text = (folder / "Modelfile").read_text()
    assert "FROM ./model-f16.gguf" in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    template = re.search(r'TEMPLATE """(.*)"""', text, re.S).group(1)
    assert "{{ .Content }}" in template and "<|im_start|>assistant\\n" in template


class _GoSubset:
    """Evaluates the Go template constructs go_template writes (a stand-in where Go is absent;
    test_go_template_with_go runs the real text/template)."""

    TOKEN = re.compile(r"\{\{ (.*?) \}\}")

    def render(self, template: str, messages) -> str:
        actions = self.TOKEN.findall(template)
        assert "".join("{{ " + a + " }}" for a in actions) == template, "literal text outside actions"
        head, body_tail = template.split("{{ range .Messages }}", 1)
        body, tail = body_tail.rsplit("{{ $prev = .Role }}{{ end }}", 1)
        prev, out = "", []
        for m in messages:
            out.append(self._branches(body.replace("{{ .Content }}", ""), prev, m["role"]))
            out.append(m["content"])
            prev = m["role"]
        out.append(self._branches(tail, prev, None))
        return "".join(out)

    def _branches(self, text: str, prev: str, role: str | None) -> str:
        for cond, literal in re.findall(r"\{\{ (?:if|else if) (.*?) \}\}\{\{ (\".*?[^\\]\") \}\}", text):
            want_prev = re.search(r'eq \$prev "(\w*)"', cond).group(1)
            want_role = re.search(r'eq \.Role "(\w+)"', cond)
            if want_prev == prev and (want_role is None or want_role.group(1) == role):
                return json.loads(literal)
        return ""


@pytest.mark.parametrize("template_name", ["chat", "qa"])
def test_go_and_jinja_templates_render_our_prompts(export_adapters, template_name):
    from lora_finetune.models import load_tokenizer, template_for

    tok = load_tokenizer(str(export_adapters["qwen3"]))
    tmpl = template_for(template_name, tok, "qwen3")
    table = measure(tmpl)
    assert table is not None
    go, jinja = go_template(table), jinja_template(table)
    for conv in sample_conversations():
        ours = render_ours(tmpl, conv)
        assert _GoSubset().render(go, conv) == ours
        assert render_jinja(jinja, conv) == ours


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain (Ollama renders TEMPLATE with Go)")
def test_go_template_with_go(export_adapters, tmp_path):
    from lora_finetune.models import load_tokenizer, template_for

    tok = load_tokenizer(str(export_adapters["qwen3"]))
    tmpl = template_for("chat", tok, "qwen3")
    go = go_template(measure(tmpl))
    (tmp_path / "main.go").write_text(
        'package main\nimport ("encoding/json"; "os"; "text/template")\n'
        "type M struct { Role string; Content string }\n"
        "func main() { var ms []M; json.Unmarshal([]byte(os.Args[2]), &ms)\n"
        '  t := template.Must(template.New("t").Parse(os.Args[1]))\n'
        '  t.Execute(os.Stdout, map[string]any{"Messages": ms}) }\n'
    )
    for conv in sample_conversations():
        out = subprocess.run(
            ["go", "run", "main.go", go, json.dumps([{"Role": m["role"], "Content": m["content"]} for m in conv])],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out == render_ours(tmpl, conv)


def test_qa_adapter_gets_a_derived_chat_template(export_adapters, tmp_path):
    """An adapter trained with the plain 问/答 format: the GGUF's chat template writes that format."""
    from lora_finetune.run_record import RunRecord

    adapter = tmp_path / "qa-adapter"
    shutil.copytree(export_adapters["llama"], adapter)
    record = RunRecord.read(adapter)
    record.resolved.template = "qa"
    record.save(adapter / "run_config.yaml")
    (adapter / "manifest.json").unlink()
    res = export_model(adapter, tmp_path / "o")
    assert res.chat_template == "derived"
    _, meta = _fields(tmp_path / "o" / res.files[0])
    rendered = render_jinja(meta["tokenizer.chat_template"], [{"role": "user", "content": "中国的首都是哪里？"}])
    assert rendered == "问：中国的首都是哪里？\n答："


def test_cli_gguf_lora_prints_the_llama_cpp_command(export_adapters, tmp_path, capsys):
    args = ["export", "--adapter", str(export_adapters["qwen2"]), "--output", str(tmp_path / "l")]
    assert main([*args, "--format", "gguf-lora", "--with-base", "--outtype", "q8_0"]) == 0
    out = capsys.readouterr().out
    assert "llama-cli -m" in out and "--lora" in out and "adapter-lora-q8_0.gguf" in out
    info = json.loads((tmp_path / "l" / "export_info.json").read_text())
    assert info["format"] == "gguf-lora" and info["files"] == ["adapter-lora-q8_0.gguf", "base-q8_0.gguf"]
    manifest = json.loads((tmp_path / "l" / "manifest.json").read_text())["files"]
    assert set(manifest) == {"adapter-lora-q8_0.gguf", "base-q8_0.gguf", "export_info.json"}


def test_qwen3_real_template_without_thinking(tmp_path):
    """Qwen3's own chat template: trained with enable_thinking=False, so the Go template and the
    GGUF's template (which llama.cpp renders without passing enable_thinking) add the empty
    <think></think> block exactly as our template does."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "_templates_cases", Path(__file__).parents[1] / "templates" / "test_templates.py"
    )
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    QWEN3 = cases.QWEN3  # the real Qwen3 chat template, kept verbatim there

    from lora_finetune.export.chat_format import with_default_enable_thinking
    from lora_finetune.models import load_tokenizer, template_for

    from helpers import CHATML, train_tokenizer

    train_tokenizer(tmp_path, CHATML)
    tok = load_tokenizer(str(tmp_path))
    tok.chat_template = QWEN3
    tmpl = template_for("chat", tok, "qwen3")
    table = measure(tmpl)
    assert table is not None and "<think>\n\n</think>\n\n" in table.tail["user"]
    for conv in sample_conversations():
        ours = render_ours(tmpl, conv)
        assert _GoSubset().render(go_template(table), conv) == ours
        assert render_jinja(with_default_enable_thinking(QWEN3), conv) == ours
