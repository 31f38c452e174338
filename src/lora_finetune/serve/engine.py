"""Many adapters on one base, and the worker that batches their requests.

`load_models([(name, folder), ...])` loads the base once (through `use.load_for_inference`, as
every other command does) and adds each adapter to it by name with peft. Every served model
keeps the tokenizer, template and stop tokens its own run record names, so a prompt is built by
the same code that built the training data (`templates.encode_prompt`).

`Engine` owns one background thread. Requests wait in a bounded queue; the thread takes the
first one, waits `batch_window_s` for more, and runs them as one left-padded batch through
`model.generate(..., adapter_names=[...])` (peft's mixed-adapter batches, `__base__` for the
bare base). Each row has its own sampling settings, random generator, stop tokens, stop strings
and length (a logits processor and a stopping criterion per batch), and hands its text to its
request as each token is made. A cancelled request (its client went away) stops its rows at
the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..templates import Template

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"
"""peft's name for "no adapter" in a mixed-adapter batch."""


class ServeError(ModelError):
    """The server cannot start as asked (adapters, port, address)."""


class QueueFull(Exception):
    """The request queue is full (HTTP 429)."""


# --------------------------------------------------------------------------- served models
@dataclass
class ServedModel:
    """One name a client can ask for: an adapter, or the base alone."""

    name: str
    adapter: str
    """peft's adapter name, or BASE_ADAPTER."""
    tokenizer: PreTrainedTokenizerBase
    template: Template
    stop_ids: frozenset[int]
    path: Path | None = None
    """The adapter folder (None for the base); never shown to clients."""
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)
    """Fast tokenizers are not safe to use from two threads at once (handlers encode, the
    worker decodes)."""

    @property
    def supports_tools(self) -> bool:
        tmpl = getattr(self.tokenizer, "chat_template", None)
        return getattr(self.template, "name", "") == "chat" and isinstance(tmpl, str) and "tools" in tmpl


@dataclass
class Models:
    model: Any
    """peft's PeftModel with every adapter loaded."""
    base_name: str
    served: dict[str, ServedModel]
    context_length: int | None
    pad_id: int
    device: torch.device


def _same_base(a: str, b: str) -> bool:
    if Path(a).is_dir() and Path(b).is_dir():
        return os.path.realpath(a) == os.path.realpath(b)
    return a == b


def load_models(adapters: list[tuple[str, str | Path]], *, device: str | None = None) -> Models:
    """Load the adapters' common base once and add every adapter to it under its name."""
    from ..models import attach_adapter, load_tokenizer
    from ..run_record import open_adapter
    from ..use.inference import load_for_inference, template_and_stops

    if not adapters:
        raise ServeError("Nothing to serve: pass --adapter DIR (or --adapter NAME=DIR), once per adapter.")
    folders = []
    for name, path in adapters:
        if not Path(path).exists():
            raise ServeError(f"--adapter {name}={path}: no such folder. Point it at the output_dir of a training run.")
        folder = open_adapter(path)
        folders.append((name, folder, folder.base_to_load()))
    first_base = folders[0][2]
    other = [(n, b) for n, _, b in folders if not _same_base(b, first_base)]
    if other:
        lines = "; ".join(f"{n} -> {b}" for n, _, b in folders)
        raise ServeError(
            f"These adapters were trained on different base models ({lines}). One server loads one base: "
            "start one `lora-finetune serve` per base model."
        )
    first_name, first_folder, _ = folders[0]
    im = load_for_inference(first_folder.path, base_only=True, device=device)
    model = im.model
    base_name = Path(im.base_model).name if Path(im.base_model).is_dir() else im.base_model
    served: dict[str, ServedModel] = {}
    for name, folder, _ in folders:
        try:
            model = attach_adapter(model, folder.path, adapter_name=name)
        except Exception as e:  # a corrupt or foreign adapter: say which one
            raise ServeError(
                f"Could not load adapter {name} from {folder.path}: {type(e).__name__}: {e}. "
                "Check that the folder is a complete training output for this base model."
            ) from None
        trc = bool(folder.record is not None and folder.record.config.trust_remote_code)
        tok = (
            load_tokenizer(str(folder.path), trc, padding_side="left")
            if folder.has_tokenizer and folder.path != first_folder.path
            else im.tokenizer
        )
        if tok.get_vocab() != im.tokenizer.get_vocab():
            raise ServeError(
                f"Adapter {name} ({folder.path}) has a tokenizer with a different vocabulary from "
                f"{first_name}'s; one batch needs one vocabulary. Serve it from its own server."
            )
        tmpl, stops = template_and_stops(folder.record, tok, model)
        served[name] = ServedModel(name, name, tok, tmpl, frozenset(stops), folder.path)
    if base_name in served:
        raise ServeError(
            f"An adapter is named {base_name!r}, the name of the base model; give it another name "
            f"(--adapter OTHER={served[base_name].path})."
        )
    # The base alone is prompted like the first adapter (as `--base-only` does elsewhere).
    served[base_name] = ServedModel(
        base_name, BASE_ADAPTER, im.tokenizer, im.template, frozenset(im.stop_token_ids), None
    )
    model.eval()
    pad = im.tokenizer.pad_token_id
    if pad is None:
        pad = min(im.stop_token_ids) if im.stop_token_ids else 0
    return Models(model, base_name, served, im.context_length(), int(pad), im.device)


# --------------------------------------------------------------------------- requests
@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Delta:
    index: int
    text: str


@dataclass
class Finished:
    index: int
    reason: str
    """stop | length | cancelled"""
    text: str
    tokens: int


@dataclass
class Failed:
    message: str


class Row:
    """One generated sequence (one choice of one request)."""

    def __init__(self, job: Job, index: int, prompt_ids: list[int], sampling: Sampling, seed: int | None) -> None:
        self.job = job
        self.index = index
        self.prompt_ids = prompt_ids
        self.sampling = sampling
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.tokens: list[int] = []
        self.sent = ""
        self.done = False

    def _decode(self) -> str:
        served = self.job.served
        with served.tokenizer_lock:
            return served.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def _finish(self, reason: str, text: str) -> None:
        self.done = True
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.job.emit(Delta(self.index, text[len(self.sent) :]))
        self.job.emit(Finished(self.index, reason, text, len(self.tokens)))

    def push(self, token: int) -> None:
        """Take the next token: stop, or hand on the text that is now certain."""
        if token in self.job.served.stop_ids:
            self._finish("stop", self._decode())
            return
        self.tokens.append(token)
        text = self._decode()
        stops = self.sampling.stop
        if stops:
            # Search only where a stop string could newly end.
            start = max(0, len(self.sent) - max(len(s) for s in stops))
            hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
            if hits:
                self._finish("stop", text[: min(hits)])
                return
        if len(self.tokens) >= self.sampling.max_tokens:
            self._finish("length", text.rstrip("\ufffd"))  # possibly cut inside a character
            return
        safe = text.rstrip("\ufffd")
        hold = max((_overlap(safe, s) for s in stops), default=0)
        safe = safe[: len(safe) - hold]
        if len(safe) > len(self.sent) and safe.startswith(self.sent):
            self.job.emit(Delta(self.index, safe[len(self.sent) :]))
            self.sent = safe


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that begins `stop` (text held back while streaming)."""
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0


class Job:
    """One HTTP request: its rows and the queue its events go to (on the server's event loop)."""

    def __init__(self, served: ServedModel, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.served = served
        self.rows: list[Row] = []
        self.loop = loop
        self.events: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self.sink: list[Any] = []
        """Events when there is no loop (tests, benchmarks)."""
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.enqueued = time.perf_counter()

    def add_row(self, prompt_ids: list[int], sampling: Sampling) -> None:
        i = len(self.rows)
        seed = None if sampling.seed is None else (sampling.seed + i) % 2**63
        self.rows.append(Row(self, i, prompt_ids, sampling, seed))

    def emit(self, event: Any) -> None:
        if isinstance(event, (Finished, Failed)) and (isinstance(event, Failed) or all(r.done for r in self.rows)):
            self.done.set()
        if self.loop is None:
            self.sink.append(event)
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)  # type: ignore[union-attr]
        except RuntimeError:  # the loop is closed: the server is gone
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()


# --------------------------------------------------------------------------- batch hooks
class _Sampler:
    """Logits processor: each row's penalties and sampling. A sampled row's scores become
    -inf except for the drawn token, so generate's greedy step picks it; greedy rows are
    left as they are (the same text as `use.generate`)."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for i, row in enumerate(self.rows):
            if row.done:
                continue
            s = row.sampling
            if (s.presence_penalty or s.frequency_penalty) and row.tokens:
                counts = torch.bincount(torch.tensor(row.tokens, device=scores.device), minlength=scores.shape[-1]).to(
                    scores.dtype
                )[: scores.shape[-1]]
                scores[i] -= s.frequency_penalty * counts + s.presence_penalty * (counts > 0).to(scores.dtype)
            if s.temperature > 0:
                probs = torch.softmax(scores[i].float() / s.temperature, dim=-1)
                if s.top_p < 1.0:
                    sorted_p, order = torch.sort(probs, descending=True)
                    drop = torch.cumsum(sorted_p, dim=-1) - sorted_p > s.top_p
                    probs = probs.scatter(0, order[drop], 0.0)
                if row.generator is None:
                    row.generator = torch.Generator(device=scores.device)
                    row.generator.manual_seed(row.seed if row.seed is not None else int.from_bytes(os.urandom(7)))
                tok = torch.multinomial(probs, 1, generator=row.generator)
                scores[i] = float("-inf")
                scores[i, tok] = 0.0
        return scores


class _Stopper:
    """Stopping criterion: hands each row its new token; a row is done when it says so, or
    when its request is cancelled or the engine aborts."""

    def __init__(self, rows: list[Row], engine: Engine) -> None:
        self.rows = rows
        self.engine = engine

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kw: Any) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        aborting = self.engine._abort.is_set()
        for i, row in enumerate(self.rows):
            if row.done:
                continue
            if aborting or row.job.cancelled.is_set():
                row.done = True
                self.engine.cancelled_rows += 1
                row.job.emit(Finished(row.index, "cancelled", "", len(row.tokens)))
                continue
            row.push(last[i])
        return torch.tensor([r.done for r in self.rows], device=input_ids.device)


# --------------------------------------------------------------------------- the engine
class Engine:
    """The request queue and the one thread that generates."""

    def __init__(
        self,
        models: Models,
        *,
        max_batch_size: int = 8,
        batch_window_s: float = 0.01,
        max_queue: int = 64,
    ) -> None:
        self.models = models
        self.max_batch_size = max(1, int(max_batch_size))
        self.batch_window_s = max(0.0, float(batch_window_s))
        self.max_queue = max(1, int(max_queue))
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._abort = threading.Event()
        self._stopping = False
        self._busy = 0
        self._thread = threading.Thread(target=self._work, name="lora-finetune-serve", daemon=True)
        self.batches = 0
        self.batched_rows = 0
        self.cancelled_rows = 0
        """Rows stopped early because their client went away (or the engine aborted)."""

    # -------------------------------------------------------------- public
    def start(self) -> Engine:
        self._thread.start()
        return self

    def submit(self, job: Job) -> None:
        if not job.rows:
            raise ValueError("a job needs rows")
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting (--max-queue {self.max_queue})")
            self._queue.append(job)
            self._cond.notify()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "waiting": len(self._queue),
                "running": self._busy,
                "batches": self.batches,
                "cancelled": self.cancelled_rows,
            }

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking work; let the current batch finish within `timeout`, then abort it."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._abort.set()
                self._thread.join(5.0)
        with self._cond:
            left, self._queue = list(self._queue), deque()
        for job in left:
            job.emit(Failed("the server shut down before this request ran"))

    # -------------------------------------------------------------- worker
    def _take(self) -> list[Job] | None:
        """The next batch: the first waiting job, then whatever arrives within the window, up
        to max_batch_size rows. None when stopping with nothing left to do."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait(0.5)
            batch = [self._queue.popleft()]
            rows = len(batch[0].rows)
            deadline = time.perf_counter() + self.batch_window_s
            while rows < self.max_batch_size:
                if not self._queue:
                    left = deadline - time.perf_counter()
                    if left <= 0 or self._stopping:
                        break
                    self._cond.wait(left)
                    continue
                if rows + len(self._queue[0].rows) > self.max_batch_size:
                    break
                job = self._queue.popleft()
                batch.append(job)
                rows += len(job.rows)
            self._busy = rows
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            live = [j for j in batch if not j.cancelled.is_set()]
            for j in batch:
                if j.cancelled.is_set():
                    self.cancelled_rows += len(j.rows)
                    j.emit(Failed("cancelled"))
            try:
                if live:
                    self._run(live)
            except Exception as e:  # never let one batch kill the server
                log.exception("generation failed")
                for j in live:
                    if not j.done.is_set():
                        j.emit(Failed(f"generation failed: {type(e).__name__}: {e}"))
            finally:
                with self._cond:
                    self._busy = 0

    @torch.inference_mode()
    def _run(self, jobs: list[Job]) -> None:
        m = self.models
        rows = [r for j in jobs for r in j.rows]
        width = max(len(r.prompt_ids) for r in rows)
        ids = [[m.pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows]
        mask = [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows]

        self.batches += 1
        self.batched_rows += len(rows)
        names = [r.job.served.adapter for r in rows]
        route: dict[str, Any] = {}
        ctx: Any = contextlib.nullcontext()
        if len(set(names)) > 1:
            route["adapter_names"] = names  # peft's mixed-adapter batch
        elif names[0] == BASE_ADAPTER:
            ctx = m.model.disable_adapter()  # one kind only: skip the per-row routing (faster)
        else:
            m.model.set_adapter(names[0])
        with ctx:
            self._generate(rows, ids, mask, route)
        for r in rows:  # generate ended (every row done, or its length limit)
            if not r.done:
                r._finish("length", r._decode().rstrip("\ufffd"))

    def _generate(self, rows: list[Row], ids: list[list[int]], mask: list[list[int]], route: dict[str, Any]) -> None:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        m = self.models
        m.model.generate(
            input_ids=torch.tensor(ids, dtype=torch.long, device=m.device),
            attention_mask=torch.tensor(mask, dtype=torch.long, device=m.device),
            **route,
            max_new_tokens=max(r.sampling.max_tokens for r in rows),
            # Greedy search with our own per-row sampler; the same settings `use.generate` passes.
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            repetition_penalty=1.0,
            pad_token_id=m.pad_id,
            logits_processor=LogitsProcessorList([_Sampler(rows)]),
            stopping_criteria=StoppingCriteriaList([_Stopper(rows, self)]),
        )


__all__ = [
    "BASE_ADAPTER",
    "Delta",
    "Engine",
    "Failed",
    "Finished",
    "Job",
    "Models",
    "QueueFull",
    "Row",
    "Sampling",
    "ServeError",
    "ServedModel",
    "load_models",
]
