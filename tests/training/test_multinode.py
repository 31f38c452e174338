"""Two "nodes" on 127.0.0.1: `torchrun --nnodes 2 --node_rank i` one process each, as on two
machines that share the output folder (a network file system: what multi-node runs here need,
see configs/README.md).

One run, killed on node 1 (SIGKILL on rank 1 after its step-4 checkpoint), is:
- one folder's work: while it runs, another `lora-finetune train` on the same output_dir is
  refused by the output lock, which rank 0 holds for the group;
- explained on node 0, whose process loses its peer in a collective: a message naming the
  checkpoint and `--resume`, not gloo's traceback;
- resumed by starting both nodes again with `--resume`, and ends with the adapter and curve of
  one process with the same global batch.
(~1 min on 2 cores.)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from launching import (
    KILL_RANK_1,
    assert_same_adapter,
    launch_env,
    losses,
    run,
    train_one_process,
    train_target,
    write_run_config,
)

from lora_finetune.training.callbacks import last_complete_checkpoint

pytestmark = pytest.mark.slow  # four multi-process runs

STEPS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(target: list[str]) -> list[list[str]]:
    port = _free_port()
    return [
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
        + ["--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port), *target]
        for rank in (0, 1)
    ]


def _start(cmds: list[list[str]], cwd) -> list[subprocess.Popen]:
    env = launch_env()
    return [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd) for c in cmds
    ]


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    done = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        done.append((p.returncode, out, err))
    return done


def test_two_nodes_lock_kill_and_resume(tiny_qwen3, tmp_path):
    run_yaml = write_run_config(tmp_path, tiny_qwen3, steps=STEPS)
    out, go = tmp_path / "out", tmp_path / "go"
    killer = tmp_path / "killer.py"
    killer.write_text(KILL_RANK_1)

    procs = _start(_nodes([str(killer), str(run_yaml), str(out), str(go)]), tmp_path)
    try:
        deadline = time.time() + 180
        while not (tmp_path / "go.paused").exists():
            assert time.time() < deadline and all(p.poll() is None for p in procs), "the run did not reach step 2"
            time.sleep(0.2)
        # The group holds the folder: a second run on it is refused, the running one untouched.
        other = run([sys.executable, *train_target(run_yaml, out)], launch_env())
        assert other.returncode == 2, other.stderr[-2000:]
        assert "is being written by another process" in other.stderr
    finally:
        go.touch()
    (rc0, _, err0), (rc1, _, err1) = _finish(procs)

    assert rc1 != 0 and "SIGKILL" in err1  # node 1's agent reports its killed worker
    assert rc0 != 0
    assert "Another process of this run stopped at step 4" in err0, err0[-3000:]
    assert "--resume" in err0
    assert not out.exists()
    ckpt = last_complete_checkpoint(tmp_path / ".out.partial" / "checkpoints")
    assert ckpt is not None and ckpt.name == "checkpoint-4"

    # Both nodes again, with --resume: the run ends, once, where an uninterrupted one would.
    target = train_target(run_yaml, out, "--resume")
    (rc0, out0, err0), (rc1, out1, err1) = _finish(_start(_nodes(target), tmp_path))
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    assert "resuming from" in err0 and "engine: DDP, 2 processes on 2 nodes" in err0
    assert out0.count("Done (metrics.json)") == 1 and "Done" not in out1  # rank 0 reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "go.paused", "killer.py", "out", "run.yaml"]

    single = train_one_process(tiny_qwen3, tmp_path / "one", steps=STEPS, batch_size=2)
    resumed, whole = losses(out), losses(single)
    assert len(whole) == STEPS and len(resumed) >= STEPS - 4
    for a, b in zip(resumed[-(STEPS - 4) :], whole[-(STEPS - 4) :]):
        assert abs(a - b) <= 1e-4 * abs(b), (resumed, whole)
    assert_same_adapter(out, single)
