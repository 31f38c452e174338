"""The long-sample job's data: LLaMA-Factory's `alpaca_zh_demo.json`, taken from its PyPI sdist.

LLaMA-Factory's own demo set (1,000 Chinese alpaca records) is what its users try first, and its
answers are long: with SmolLM2's ChatML the first 40 records are 73-697 tokens (mean 346), so
4-sample batches are ~460 tokens after length grouping -- the "long-batch job" of bench/RESULTS.md.
PyPI is reachable where GitHub is not, so the file is read from `llamafactory-0.9.5.tar.gz`
(downloaded once into build/peers/cache with `pip download --no-binary`).

Train: records 0-39. Held out (answer loss after training): records 40-59.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "peers" / "cache"
SDIST = "llamafactory==0.9.5"
MEMBER = "llamafactory-0.9.5/data/alpaca_zh_demo.json"
N_TRAIN, N_HELDOUT = 40, 20


def alpaca_zh_demo() -> list[dict]:
    out = CACHE / "alpaca_zh_demo.json"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tars = sorted(CACHE.glob("llamafactory-0.9.5.tar.gz"))
        if not tars:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", SDIST]
                + ["-d", str(CACHE)],
                check=True,
            )
            tars = sorted(CACHE.glob("llamafactory-0.9.5.tar.gz"))
        with tarfile.open(tars[0]) as tf:
            data = tf.extractfile(MEMBER).read()
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(out)
    return json.loads(out.read_text(encoding="utf-8"))


def job_files(folder: Path) -> tuple[Path, Path]:
    """Write train.json (40 records) and heldout.json (20) in alpaca form; return both paths."""
    rows = alpaca_zh_demo()
    folder.mkdir(parents=True, exist_ok=True)
    train, held = folder / "train.json", folder / "heldout.json"
    train.write_text(json.dumps(rows[:N_TRAIN], ensure_ascii=False, indent=1), encoding="utf-8")
    held.write_text(json.dumps(rows[N_TRAIN : N_TRAIN + N_HELDOUT], ensure_ascii=False, indent=1), encoding="utf-8")
    return train, held


if __name__ == "__main__":
    print(job_files(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/alpaca-zh-40")))
