"""The distributed engine a run is launched under, read from the launcher's environment, and
the combinations refused before any weight loads.

`torchrun` and `accelerate launch` start `lora-finetune train` unchanged; what they ask for
reaches transformers' Trainer through environment variables (accelerate's launcher writes
`ACCELERATE_USE_DEEPSPEED` / `ACCELERATE_USE_FSDP` and the engine's settings). We read the same
variables to say which engine the run uses, record it, and stop the combinations that would
otherwise train something else than asked, silently:

- FSDP without CUDA: accelerate picks FSDP only for accelerator devices; on a CPU its state is
  MULTI_CPU and the FSDP settings are ignored, so the run would be plain DDP with every weight
  on every process (measured: accelerate 1.16; tests/training/test_fsdp.py pins it). torch's own
  `fully_shard` does run on CPU with gloo; accelerate does not route to it.
- FSDP or ZeRO-3 with a 4-bit / 8-bit base: bitsandbytes weights as our loader stores them cannot
  be sharded (configs/README.md).
- DeepSpeed asked for and not installed, or its JSON file missing (accelerate's configs name it
  relative to where the command runs), a folder or broken: transformers would fail deep inside.

DeepSpeed runs on a CPU through its CPU accelerator (gloo); there the trainer must not be told
`use_cpu` (accelerate then drops DeepSpeed as well) but `ddp_backend: gloo`, which
`trainer_device_args` decides.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TrainingError


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Engine:
    name: str
    """`single` (one process), `ddp`, `fsdp` or `deepspeed`."""
    world_size: int = 1
    """Processes in the run, over all nodes."""
    nodes: int = 1
    """Machines (`torchrun --nnodes`; accelerate's `num_machines`)."""
    zero_stage: int | None = None
    """DeepSpeed's ZeRO stage, from its JSON file (None when not DeepSpeed or unreadable)."""
    fsdp_version: int | None = None
    """FSDP 1 or 2 (accelerate's `fsdp_version`)."""
    deepspeed_problem: str | None = None
    """What is wrong with the DeepSpeed JSON file the accelerate config names
    (`deepspeed_config_file`): missing, a folder, broken; None when it reads or none is named."""

    @property
    def shards_weights(self) -> bool:
        """Whether each process holds only a part of the weights (ZeRO-3, FSDP)."""
        return self.name == "fsdp" or (self.name == "deepspeed" and self.zero_stage == 3)

    @property
    def label(self) -> str:
        """The engine's name as users know it: `DDP`, `FSDP2`, `DeepSpeed ZeRO-3`."""
        return {
            "single": "one process",
            "ddp": "DDP",
            "fsdp": f"FSDP{self.fsdp_version or ''}",
            "deepspeed": f"DeepSpeed ZeRO-{self.zero_stage}" if self.zero_stage is not None else "DeepSpeed",
        }[self.name]

    def describe(self) -> str:
        """One line for the log and the run record's notes."""
        if self.name == "single":
            return f"engine: {self.label}"
        where = f" on {self.nodes} nodes" if self.nodes > 1 else ""
        processes = f"{self.world_size} process{'es' if self.world_size != 1 else ''}"
        return f"engine: {self.label}, {processes}{where}"


def read_deepspeed_json(path: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the file's settings, None) or (None, what is wrong with it, to tell the user)."""
    import json

    file = Path(path)
    if not file.is_file():
        where = "" if file.is_absolute() else f" (relative to the current folder {Path.cwd()})"
        what = "is a folder" if file.is_dir() else "does not exist"
        return None, (
            f"the DeepSpeed config file {path}{where}, named by the accelerate config's "
            f"deepspeed_config_file, {what}. Run from the folder it is relative to (the repository "
            "root for configs/), or give its absolute path in the accelerate config."
        )
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return None, f"the DeepSpeed config file {path}, line {e.lineno}, column {e.colno}: {e.msg}. Fix the JSON."
    except (OSError, UnicodeDecodeError) as e:
        return None, f"the DeepSpeed config file {path} cannot be read ({e}). Check it."
    if not isinstance(settings, dict):
        return None, f"the DeepSpeed config file {path} holds {type(settings).__name__}, not an object of settings."
    return settings, None


def _deepspeed(env: Mapping[str, str], world: int, nodes: int) -> Engine:
    """DeepSpeed's engine: its ZeRO stage from the JSON file when one is named (accelerate's
    `ACCELERATE_DEEPSPEED_ZERO_STAGE` otherwise), the file read once."""
    path = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path:
        settings, problem = read_deepspeed_json(path)
        zero = (settings or {}).get("zero_optimization")
        stage = zero.get("stage") if isinstance(zero, dict) else None
        stage = stage if isinstance(stage, int) else None
    else:
        problem, stage_text = None, env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        stage = int(stage_text) if stage_text and stage_text.isdigit() else None
    return Engine("deepspeed", world, nodes, zero_stage=stage, deepspeed_problem=problem)


def launched_engine(env: Mapping[str, str] | None = None) -> Engine:
    """The engine the launcher asked for (read from its environment variables)."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1") or 1)
    local = int(env.get("LOCAL_WORLD_SIZE", str(world)) or world)
    nodes = max(1, world // max(1, local))
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        return _deepspeed(env, world, nodes)
    if _flag(env, "ACCELERATE_USE_FSDP"):
        return Engine("fsdp", world, nodes, fsdp_version=int(env.get("FSDP_VERSION", "1") or 1))
    return Engine("ddp" if world > 1 else "single", world, nodes)


def engine_problems(engine: Engine, on_gpu: bool, quantization: str) -> list[str]:
    """What makes the launch train something else than asked; each with what to do instead."""
    problems = []
    if engine.name == "fsdp" and not on_gpu:
        problems.append(
            "FSDP needs GPUs: without CUDA, accelerate ignores the FSDP settings and would run plain "
            "DDP (every weight on every process). On a CPU use DDP: `torchrun --nproc_per_node N -m "
            "lora_finetune train --config run.yaml`; or DeepSpeed (its CPU accelerator), see "
            "configs/README.md."
        )
    if engine.shards_weights and quantization != "none":
        what = "FSDP" if engine.name == "fsdp" else "DeepSpeed ZeRO-3"
        problems.append(
            f"quantization: {quantization} cannot be used under {what}: bitsandbytes weights as "
            "lora-finetune loads them are not sharded by it. Use DDP (torchrun) or DeepSpeed ZeRO-2 "
            "with a quantized base, or quantization: none under "
            f"{what}."
        )
    if engine.deepspeed_problem:
        problems.append(engine.deepspeed_problem)
    if engine.name == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        problems.append(
            "the launcher asks for DeepSpeed, which is not installed here: `pip install deepspeed` "
            "(on every node), or launch with configs/accelerate_ddp.yaml or torchrun for DDP."
        )
    return problems


def trainer_device_args(engine: Engine, on_gpu: bool) -> dict[str, Any]:
    """The Trainer's `use_cpu` and `ddp_backend` for the engine on this machine.

    Without CUDA, torchrun's processes only form a (gloo) DDP group when accelerate is told it
    runs on a CPU (otherwise each trains alone on the same output_dir). DeepSpeed's CPU
    accelerator forms its own group: `use_cpu` would make accelerate drop DeepSpeed, and without
    `ddp_backend: gloo` transformers counts one process and fills the JSON file's `auto` batch
    size for one (DeepSpeed then stops: "train_batch_size is not equal to micro_batch_per_gpu *
    gradient_acc_step * world_size 1 != 1 * 1 * 2")."""
    if on_gpu or engine.world_size <= 1:
        return {"use_cpu": False}
    if engine.name == "deepspeed":
        return {"use_cpu": False, "ddp_backend": "gloo"}
    return {"use_cpu": True}


def is_peer_failure(error: BaseException, engine: Engine) -> bool:
    """Whether a training step failed because another process of the run is gone (killed, out of
    memory, its node lost): gloo and NCCL then fail the collective this process waits in."""
    if engine.world_size <= 1:
        return False
    import torch.distributed as dist

    kinds = tuple(k for k in (getattr(dist, "DistBackendError", None), getattr(dist, "DistNetworkError", None)) if k)
    if isinstance(error, kinds):
        return True
    text = str(error)
    # (NCCL's errors are DistBackendError; gloo's lost peer is a plain RuntimeError.)
    return isinstance(error, RuntimeError) and any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "remote worker crashing")
    )


def peer_lost(when: str, error: BaseException, resume_hint: str = "") -> TrainingError:
    """What a process says when `is_peer_failure(error)`: the others' own logs hold the cause."""
    return TrainingError(
        f"Another process of this run stopped {when} (this one lost it: {str(error).splitlines()[0][:160]}); "
        f"its own log says why. {resume_hint + ' ' if resume_hint else ''}"
        "Start every process (on every node) again with --resume."
    )


@contextmanager
def leave_together() -> Iterator[None]:
    """Every process of a launched run leaves train() only after rank 0 has written the output
    folder. The other ranks have nothing left to do after the last step; if one left at once and
    then failed on its way out of the process, the launcher would SIGTERM rank 0 mid-write.
    Nothing happens on an error: the process is on its way out and its peers may be gone."""
    import torch.distributed as dist

    yield
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.barrier()
    except RuntimeError as e:
        if not is_peer_failure(e, launched_engine()):
            raise
        raise peer_lost("after training, while rank 0 wrote the output folder", e) from None


def end_process_group() -> None:
    """End the launched run's process group before the process exits, as torch asks. Left alive,
    gloo's threads are torn down by the C++ runtime at exit, after Python; there a ZeRO-3 rank
    aborted once in CI ("terminate called without an active exception", SIGABRT after the run
    had finished, so the launcher reported it failed). For the process's owner (the CLI): under
    torchrun a group cannot be set up again in the same process (the launcher's store keeps the
    first one's addresses), so a library call that ended it would break a second run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "Engine",
    "end_process_group",
    "engine_problems",
    "is_peer_failure",
    "launched_engine",
    "leave_together",
    "peer_lost",
    "read_deepspeed_json",
    "trainer_device_args",
]
