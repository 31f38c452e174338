"""Virtual environments for the peers of `bench_peers.py`: LLaMA-Factory 0.9.5 and TRL 1.16.

Each peer gets its own venv under build/peers/ (ignored), with the CPU build of PyTorch installed
first, so that no requirement ever resolves to a multi-GB CUDA build:

- LLaMA-Factory 0.9.5 requires torch, torchvision and torchaudio. PyPI's torchvision does not
  import beside the CPU torch 2.13.0 file, and torchaudio would pull another torch. It imports
  `torchaudio` at module level (data/mm_plugin.py) but only uses it for audio datasets, so the
  package is installed without dependencies, its other requirements (copied from its wheel's
  METADATA, torch* removed) are installed next, and an empty `torchaudio` module stands in.
- TRL 1.16 needs only torch, transformers, accelerate, datasets (and peft for LoRA).

Run `python bench/peer_envs.py` to create both (a few minutes each, downloads from PyPI);
`bench_peers.py` calls `ensure()` itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / "build" / "peers"
TORCH = "torch==2.13.0"

LLAMAFACTORY = "llamafactory==0.9.5"
# llamafactory 0.9.5's Requires-Dist without torch, torchvision and torchaudio
LLAMAFACTORY_DEPS = [
    "accelerate<=1.11.0,>=1.3.0",
    "av<=16.0.0,>=10.0.0",
    "datasets<=4.0.0,>=2.16.0",
    "einops",
    "fastapi",
    "fire",
    "gradio<=5.50.0,>=4.38.0",
    "hf-transfer",
    "matplotlib>=3.7.0",
    "modelscope",
    "numpy",
    "omegaconf",
    "packaging",
    "pandas",
    "peft<=0.18.1,>=0.18.0",
    "protobuf",
    "pydantic",
    "pyyaml",
    "safetensors",
    "scipy",
    "sentencepiece",
    "sse-starlette",
    "tiktoken",
    "torchdata<=0.11.0,>=0.10.0",
    "transformers!=4.52.0,!=4.57.0,<=5.6.0,>=4.55.0",
    "trl<=0.24.0,>=0.18.0",
    "tyro<0.9.0",
    "uvicorn",
]
TRL = ["trl==1.16.0", "peft", "datasets"]

TORCHAUDIO_STUB = '''"""Stand-in for torchaudio (bench/peer_envs.py): LLaMA-Factory imports it at module level but
uses it only for audio datasets; the real package would replace the CPU build of torch."""
__version__ = "0.0.0+stub"
'''


def python(name: str) -> Path:
    return PEERS_DIR / name / "bin" / "python"


def _pip(name: str, *args: str) -> None:
    subprocess.run([str(python(name)), "-m", "pip", "install", "-q", *args], check=True)


def _venv(name: str) -> None:
    if not python(name).exists():
        PEERS_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_DIR / name)], check=True)
        _pip(name, "--upgrade", "pip")
        _pip(name, TORCH)


def _site_packages(name: str) -> Path:
    out = subprocess.run(
        [str(python(name)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def ensure(name: str) -> Path:
    """Create the peer's venv if it is missing or incomplete; return its python."""
    stamp = PEERS_DIR / name / ".installed"
    if stamp.exists():
        return python(name)
    _venv(name)
    if name == "llamafactory":
        _pip(name, "--no-deps", LLAMAFACTORY)
        _pip(name, *LLAMAFACTORY_DEPS)
        stub = _site_packages(name) / "torchaudio"
        stub.mkdir(exist_ok=True)
        (stub / "__init__.py").write_text(TORCHAUDIO_STUB)
    elif name == "trl":
        _pip(name, *TRL)
    else:
        raise ValueError(f"unknown peer {name!r}")
    stamp.write_text("ok\n")
    return python(name)


if __name__ == "__main__":
    for peer in sys.argv[1:] or ["llamafactory", "trl"]:
        print(peer, "->", ensure(peer), flush=True)
