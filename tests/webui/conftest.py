"""The web UI tests' server: a workdir holding a tiny model and a data file, and the page served
from this process on a free port (training still runs in its own `lora-finetune train` process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_tiny_model
from webui_support import free_port

pytest.importorskip("gradio", reason="the web UI needs gradio: pip install 'lora-finetune[ui]'")


@pytest.fixture(scope="session")
def webui_workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("webui-work")
    make_tiny_model(root / "models" / "tiny", "qwen3")
    return root


@pytest.fixture(scope="session")
def webui_server(webui_workdir):
    """(url, WebUI) of a running page; every training it started is stopped at the end."""
    from lora_finetune.webui.server import launch

    demo, url = launch(str(webui_workdir), port=free_port(), block=False, quiet=True)
    yield url.rstrip("/"), demo.webui
    demo.webui.jobs.shutdown(timeout=30)
    demo.close()
