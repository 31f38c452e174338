"""What GGUF export costs in quality: perplexity of the exported f16, bf16 and q8_0 files
against the merged fp32 model, on the answers of the 20 demo samples (labels as in training).

    python bench/bench_export.py                       # trains the demo adapter first (CPU, minutes)
    python bench/bench_export.py --adapter outputs/demo

The bundled SmolLM2-135M-Instruct; each GGUF is read back with transformers' GGUF loader (the
weights dequantised to fp32, so only the storage format differs). Results go to bench/out/export.json;
the README's and bench/RESULTS.md's numbers come from it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

OUT = Path(__file__).parent / "out"


def _nll(model, encoded) -> tuple[float, int, list[list[int]]]:
    total, count, argmaxes = 0.0, 0, []
    with torch.no_grad():
        for e in encoded:
            x = torch.tensor([e.input_ids])
            labels = torch.tensor(e.labels[1:])
            logits = model(x).logits[0, :-1].float()
            mask = labels != -100
            total += float(torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum"))
            count += int(mask.sum())
            argmaxes.append(logits.argmax(-1)[mask].tolist())
    return total, count, argmaxes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", type=Path, help="an adapter of the bundled model (default: train the demo's)")
    ap.add_argument("--work", type=Path, default=OUT / "export-work")
    args = ap.parse_args()
    torch.manual_seed(0)

    from lora_finetune.config import build_config
    from lora_finetune.data import dummy_rows
    from lora_finetune.data.formats import records_from_rows
    from lora_finetune.export import export_model
    from lora_finetune.templates.encode import encode_records
    from lora_finetune.use import load_for_inference

    adapter = args.adapter
    if adapter is None:
        from lora_finetune.folders import is_complete
        from lora_finetune.training import train

        adapter = args.work / "demo-adapter"
        if not is_complete(adapter):  # the demo's settings (Makefile `demo`)
            train(
                build_config(
                    dict(
                        model_name="smollm2-135m-instruct",
                        output_dir=str(adapter),
                        steps=60,
                        learning_rate=1e-3,
                        eval_steps=20,
                        save_steps=20,
                    )
                )
            )
    im = load_for_inference(adapter, dtype="fp32", device="cpu")
    records = records_from_rows(dummy_rows())
    encoded, _ = encode_records(records, im.tokenizer, im.template, max_length=10**6)
    merged = im.model.merge_and_unload().eval()
    rows = []
    ref_nll, n, ref_argmax = _nll(merged, encoded)
    rows.append(
        {"model": "merged fp32 (transformers)", "file_mb": None, "ppl": math.exp(ref_nll / n), "top1_same": 1.0}
    )
    from transformers import AutoModelForCausalLM

    for outtype in ("f16", "bf16", "q8_0"):
        t = time.time()
        res = export_model(adapter, args.work / f"gguf-{outtype}", outtype=outtype, overwrite=True)
        seconds = time.time() - t
        path = args.work / f"gguf-{outtype}" / res.files[0]
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        nll, count, argmax = _nll(model, encoded)
        same = sum(a == b for x, y in zip(argmax, ref_argmax) for a, b in zip(x, y)) / count
        rows.append(
            {
                "model": f"GGUF {outtype}",
                "file_mb": round(path.stat().st_size / 2**20, 1),
                "ppl": math.exp(nll / count),
                "top1_same": same,
                "export_s": round(seconds, 1),
            }
        )
    OUT.mkdir(exist_ok=True)
    report = {"adapter": str(adapter), "answer_tokens": n, "samples": len(encoded), "rows": rows}
    (OUT / "export.json").write_text(json.dumps(report, indent=2))
    print(f"{'model':<28}{'file MB':>9}{'perplexity':>12}{'same top-1':>12}")
    for r in rows:
        mb = "-" if r["file_mb"] is None else f"{r['file_mb']:.1f}"
        print(f"{r['model']:<28}{mb:>9}{r['ppl']:>12.4f}{100 * r['top1_same']:>11.1f}%")
    print(f"({n} answer tokens of {len(encoded)} demo samples)")


if __name__ == "__main__":
    main()
