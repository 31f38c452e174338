"""The web UI's guard rails, without a browser: the workdir confinement (paths, names, symlinks,
uploads), the training-process bookkeeping, the address checks and the CLI verb."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from lora_finetune.errors import ConfigError, DataError, LoraFinetuneError
from lora_finetune.webui.jobs import JobManager, NothingRunningError, closing_message, parse_log
from lora_finetune.webui.paths import MAX_UPLOAD_BYTES, PathError, Workdir


@pytest.fixture
def wd(tmp_path):
    return Workdir.create(tmp_path / "work")


# --------------------------------------------------------------------------- paths
@pytest.mark.parametrize(
    "path",
    ["../outside.jsonl", "data/../../outside.jsonl", "/etc/passwd", "~/x.jsonl", "data/../../../etc/hostname"],
)
def test_paths_out_of_the_workdir_are_refused(wd, path):
    with pytest.raises(PathError, match="leads outside the workdir"):
        wd.resolve(path, "data file", must_exist=False)


def test_symlinks_out_are_refused_anywhere_along_the_path(wd, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "data.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    (wd.root / "data" / "link.jsonl").symlink_to(outside / "data.jsonl")
    (wd.root / "linkdir").symlink_to(outside)
    for path in ("data/link.jsonl", "linkdir/data.jsonl"):
        with pytest.raises(PathError, match="symlink"):
            wd.resolve(path, "data file")


def test_paths_inside_are_fine_absolute_or_relative(wd):
    f = wd.data / "a.jsonl"
    f.write_text("{}\n")
    assert wd.resolve("data/a.jsonl") == f
    assert wd.resolve(str(f)) == f
    (wd.root / "data" / "inner.jsonl").symlink_to(f)  # a link that stays inside is fine
    assert wd.resolve("data/inner.jsonl") == f
    with pytest.raises(PathError, match="does not exist"):
        wd.resolve("data/missing.jsonl")
    with pytest.raises(PathError, match="empty"):
        wd.resolve("   ")
    with pytest.raises(PathError, match="NUL"):
        wd.resolve("data/a\x00.jsonl")


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "", "x" * 81, "a b", "名字"])
def test_run_and_export_names_are_plain_names(wd, name):
    with pytest.raises(PathError, match="plain name"):
        wd.output(name)
    with pytest.raises(PathError, match="plain name"):
        wd.export_dir(name)


def test_outputs_folder_symlinked_out_is_refused(wd, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    os.rmdir(wd.outputs)
    wd.outputs.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PathError, match="outside the workdir"):
        wd.output("run1")


def test_workdir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        Workdir.create(tmp_path / "f")


# --------------------------------------------------------------------------- uploads
def test_upload_is_copied_into_data_with_a_safe_name(wd, tmp_path):
    src = tmp_path / "upload-tmp"
    src.write_text('{"instruction": "q", "output": "a"}\n')
    dst = wd.take_upload(src, "../../My Data (1).JSONL")
    assert dst == wd.data / "My_Data_1.jsonl"
    assert dst.read_text() == src.read_text()


def test_empty_upload(wd, tmp_path):
    (tmp_path / "e").write_text("")
    with pytest.raises(DataError, match="is empty"):
        wd.take_upload(tmp_path / "e", "e.jsonl")


def test_huge_upload(wd, tmp_path):
    big = tmp_path / "big"
    with open(big, "wb") as f:  # sparse: no disk used
        f.truncate(MAX_UPLOAD_BYTES + 1)
    with pytest.raises(DataError, match="MiB"):
        wd.take_upload(big, "big.jsonl")
    assert not (wd.data / "big.jsonl").exists()


def test_upload_never_writes_through_a_symlink(wd, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (wd.data / "x.jsonl").symlink_to(victim)
    src = tmp_path / "u"
    src.write_text('{"instruction": "q", "output": "a"}\n')
    dst = wd.take_upload(src, "x.jsonl")
    assert victim.read_text() == "keep me"
    assert not dst.is_symlink()


# --------------------------------------------------------------------------- the page's actions
def test_model_folders_must_be_inside_but_names_pass(wd, tmp_path):
    from lora_finetune.webui.actions import WebUI

    ui = WebUI(wd)
    assert ui.model_name("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert ui.model_name("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"
    (tmp_path / "model").mkdir()
    with pytest.raises(PathError, match="outside the workdir"):
        ui.model_name(str(tmp_path / "model"))
    with pytest.raises(PathError, match="outside the workdir"):
        ui.model_name("../model")
    with pytest.raises(ConfigError, match="empty"):
        ui.model_name("")
    with pytest.raises(PathError):
        ui.data_path("../../etc/passwd")
    with pytest.raises(ConfigError, match="folder, not a file"):
        ui.data_path("data")


def test_settings_are_checked_by_the_config_before_a_process_starts(wd):
    from lora_finetune.webui.actions import WebUI

    ui = WebUI(wd)
    with pytest.raises(ConfigError, match=r"r=0: the LoRA rank"):
        ui.start("run1", "smollm2-135m-instruct", None, {"r": 0, "steps": 3})
    assert ui.jobs.names() == []


def test_stop_when_nothing_runs(wd):
    jobs = JobManager(wd.state)
    with pytest.raises(NothingRunningError, match="Nothing is training"):
        jobs.stop("run1")
    assert isinstance(NothingRunningError("x"), LoraFinetuneError)
    assert jobs.progress("run1").state == "idle"


def test_estimates_in_parallel_leave_torch_unpatched(wd, tiny_qwen3):
    """Overlapping weightless-model builds (accelerate's init_empty_weights) must not leave
    nn.Module patched: a model built afterwards would be all meta tensors."""
    import shutil

    import torch

    from lora_finetune.webui.actions import WebUI

    shutil.copytree(tiny_qwen3, wd.root / "models" / "tiny")
    ui = WebUI(wd)
    before = torch.nn.Module.register_parameter
    errors: list[BaseException] = []

    def one(bs: int) -> None:
        try:
            ui._shapes.clear()
            assert "GiB" in ui.estimate("models/tiny", {"batch_size": bs, "max_length": 64})
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one, args=(b,)) for b in (1, 2, 3, 4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert torch.nn.Module.register_parameter is before
    assert torch.nn.Linear(2, 2).weight.device.type != "meta"


# --------------------------------------------------------------------------- log reading
LOG = """$ lora-finetune train --config x.yaml
[lora-finetune] step 1/4  loss 2.5000  lr 1.0e-03  grad 1.2  |  0.50 s/step, ~2s left
[lora-finetune] step 2/4  loss 2.2500  lr 1.0e-03  grad 1.1  |  0.50 s/step, ~1s left
[lora-finetune] step 2/4  eval loss 2.4000
[lora-finetune] interrupted: saving a checkpoint at the end of this step (Ctrl-C again to quit without saving)
error: Training interrupted at step 2. The last checkpoint is /w/.run.partial/checkpoints/checkpoint-2; continue
with `lora-finetune train --resume` and the same settings.
"""


def test_progress_and_closing_words_from_the_log():
    prog = parse_log(LOG)
    assert (prog.step, prog.total, prog.eta) == (2, 4, "1s")
    assert prog.train == [(1, 2.5), (2, 2.25)]
    assert prog.eval == [(2, 2.4)]
    assert closing_message(LOG).startswith("Training interrupted at step 2.")
    assert "--resume" in closing_message(LOG)
    assert closing_message("Done (metrics.json): steps 3\n  outputs in x/").startswith("Done")


# --------------------------------------------------------------------------- serving
def test_non_loopback_needs_allow_remote(tmp_path):
    from lora_finetune.webui.server import is_loopback, launch

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    with pytest.raises(ConfigError, match="--allow-remote"):
        launch(str(tmp_path / "w"), host="0.0.0.0", block=False)


def test_port_in_use_is_a_message(tmp_path):
    from lora_finetune.webui.server import check_port

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConfigError, match="Choose another --port"):
            check_port("127.0.0.1", s.getsockname()[1])
    with pytest.raises(ConfigError, match="between 1 and 65535"):
        check_port("127.0.0.1", 70000)


def test_cli_has_the_webui_verb(capsys, tmp_path):
    from lora_finetune.cli import main

    with pytest.raises(SystemExit):
        main(["webui", "--help"])
    out = capsys.readouterr().out
    assert "--workdir" in out and "127.0.0.1" in out
    assert main(["webui", "--host", "0.0.0.0", "--workdir", str(tmp_path / "w")]) == 2
    assert "--allow-remote" in capsys.readouterr().err
