"""Training: config in, self-describing adapter folder out.

- `run.py`: the run (output folder and resume, Trainer wiring, saving the folder);
- `dataset.py`: records -> template -> ids and labels, train/eval split;
- `batching.py`: the collators (padding, packing, logits only where labels are);
- `callbacks.py`: health (NaN), interrupts (Ctrl-C / SIGTERM), complete checkpoints;
- `kernels.py`: liger-kernel fused ops where installed and supported;
- `report.py`: metrics.json and loss_curve.png.
"""

from __future__ import annotations

from .dataset import PreparedData, prepare_data, split_records
from .run import TrainResult, require_checkpoint, train

__all__ = ["PreparedData", "TrainResult", "prepare_data", "require_checkpoint", "split_records", "train"]
