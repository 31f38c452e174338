"""How the page's events are wired (webui/app.py), where a browser test would only fail now and then."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from lora_finetune.webui.actions import WebUI
    from lora_finetune.webui.app import build_app
    from lora_finetune.webui.paths import Workdir

    wd = Workdir.create(tmp_path_factory.mktemp("webui-app"))
    return build_app(wd, WebUI(wd))


def test_memory_estimates_run_one_at_a_time_and_the_latest_stays(demo):
    """Typing several settings fires an estimate per change; run side by side, an older one (with
    r still at its default) could finish last and stay on the page (seen in CI). Every estimate
    shares one queue of one worker, and a change while one runs keeps only the newest."""
    (estimate,) = [c for c in demo.blocks.values() if getattr(c, "elem_id", None) == "estimate"]
    computing = [f for f in demo.fns.values() if f.name == "on_estimate"]
    assert {t[1] for f in computing for t in f.targets} == {"change", "load"}
    assert all(any(o._id == estimate._id for o in f.outputs) for f in computing)
    assert {(f.concurrency_id, f.concurrency_limit) for f in computing} == {("estimate", 1)}
    on_change = [f for f in computing if any(t[1] == "change" for t in f.targets)]
    assert len(on_change) == 1 and on_change[0].trigger_mode == "always_last"
    # the language switch and every setting the estimate reads are among its triggers
    assert len(on_change[0].targets) >= 3
