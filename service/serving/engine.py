"""The inference engine's batcher: one thread owns the model, batches requests, and applies
model changes (through the adapter slot, ``adapter_slot.py``) between two batches.

Requests (a user's prompt prefix and the candidates' suffixes) go through a queue. The loop takes
the first, waits up to ``max_wait_ms`` for more until ``max_batch_rows`` candidate rows are
gathered, scores them in one pass (with prefix reuse: each user's prefix once, its KV cache
repeated per candidate), and answers each request's future. Model changes (a new adapter, a new
base) travel through the same queue, so they happen between two batches: every batch, and so
every response, is scored by exactly one version.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import torch

from e2urec.adapter_files import AdapterFiles
from e2urec.backbones import Backbone
from e2urec.data.prompts import Prompt
from e2urec.encoding import encode_shared_prefix
from e2urec.scoring import predict_like, prefix_cached_like
from service.serving.adapter_slot import AdapterSlot, ModelVersion

log = logging.getLogger(__name__)


@dataclass
class Scored:
    scores: list[float]
    version: ModelVersion
    batch_rows: int  # rows in the model batch this request shared
    wait_ms: float  # time from submit to the start of its batch


@dataclass
class _Request:
    prefix: str
    suffixes: list[str]
    future: Future
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class _Control:
    action: Callable[[], Any]
    future: Future


_STOP = object()
_WAKE = object()  # "a model change is waiting": ends the gathering of the current batch


def _settle(future: Future, result: Any = None, exc: BaseException | None = None) -> None:
    """Answer a future unless its caller gave up on it: a cancelled or already answered future
    is skipped, so a client that timed out can never raise into the loop."""
    if future.done():
        return
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled between the check and the answer
        pass


class InferenceEngine:
    def __init__(
        self,
        backbone: Backbone,
        version: ModelVersion,
        *,
        max_batch_rows: int = 64,
        max_wait_ms: float = 5.0,
        prefix_reuse: bool = True,
        batching: bool = True,
        probe_tolerance: float = 1e-3,
        on_batch: Callable[[int, int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
    ):
        if max_batch_rows < 1:
            raise ValueError("max_batch_rows must be at least 1")
        self.slot = AdapterSlot(
            backbone, version, probe_tolerance=probe_tolerance, probe_batch_rows=max_batch_rows
        )
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000
        self.want_prefix_reuse = prefix_reuse
        self.batching = batching
        self.on_batch = on_batch  # (requests, rows) after each batch, for metrics
        self.on_dropped = on_dropped  # requests skipped because their client gave up
        self._queue: queue.Queue = queue.Queue()
        # Model changes jump the request queue: applied after the batch being scored, not after
        # every request already waiting (each answer that waits on a swap is a non-personalised
        # one while the process is behind the registry).
        self._controls: deque[_Control] = deque()
        self._carry: deque[_Request] = deque()  # taken from the queue but left for next batch
        self._current: list[_Request] = []  # the batch being scored
        self._thread: threading.Thread | None = None
        self._stopped = False  # stop() was asked for: a dead loop is then not restarted
        self.deaths = 0  # loops that ended without being asked to (see ensure_running)
        self.errors = 0  # exceptions the loop caught and survived

    @property
    def backbone(self) -> Backbone:
        return self.slot.backbone

    @property
    def version(self) -> ModelVersion:
        return self.slot.version

    @property
    def prefix_reuse(self) -> bool:
        # A seq2seq encoder reads the whole prompt both ways: it has no reusable prefix.
        return self.want_prefix_reuse and not self.backbone.is_seq2seq

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> InferenceEngine:
        if self._thread is None:
            self._stopped = False
            self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def dead(self) -> bool:
        """The loop ended without stop(): nothing answers until ensure_running()."""
        return not self._stopped and self._thread is not None and not self._thread.is_alive()

    def ensure_running(self) -> bool:
        """The supervisor's hook: restart a loop that died. True if it restarted one."""
        if not self.dead:
            return False
        log.error("the inference loop had died (%d so far); restarting it", self.deaths)
        self._thread = None
        self.start()
        return True

    # -- requests --------------------------------------------------------------------------
    def submit(self, prefix: str, suffixes: Sequence[str]) -> Future:
        """P(like) of every suffix after ``prefix``; the future gives a :class:`Scored`."""
        future: Future = Future()
        if not suffixes:
            future.set_result(Scored([], self.version, 0, 0.0))
            return future
        if not self.running:
            future.set_exception(RuntimeError("the inference engine is not running"))
            return future
        self._queue.put(_Request(prefix, list(suffixes), future))
        return future

    async def score(self, prefix: str, suffixes: Sequence[str]) -> Scored:
        return await asyncio.wrap_future(self.submit(prefix, suffixes))

    # -- model changes (run by the loop thread, between batches) ------------------------------
    def swap_adapter(self, adapter: AdapterFiles | None, version: ModelVersion) -> Future:
        """Make ``adapter`` (``None``: the bare base) the serving model after a smoke test on its
        probe prompts. The future gives a :class:`SwapReport` or raises :class:`SwapError`, in
        which case the previous version keeps serving."""
        return self._control(lambda: self.slot.apply_adapter(adapter, version))

    def swap_base(self, backbone: Backbone, version: ModelVersion) -> Future:
        """Replace the whole model (after a consolidation); the old one is freed."""
        return self._control(lambda: self.slot.apply_base(backbone, version))

    def _control(self, action: Callable[[], Any]) -> Future:
        future: Future = Future()
        if not self.running:  # nothing is scoring: apply right here
            try:
                future.set_result(action())
            except Exception as exc:
                future.set_exception(exc)
            return future
        self._controls.append(_Control(action, future))
        self._queue.put(_WAKE)
        return future

    # -- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # noqa: BLE001 - logged; the thread ends and is restarted
            # Only a BaseException (or a bug outside the guarded steps) gets here. The thread
            # ends; whoever waits is told now rather than timing out, and the supervisor
            # (ModelSync, /health) sees `dead` and restarts the loop.
            self.deaths += 1
            log.exception("the inference loop died")
            self._fail_waiting(RuntimeError("the inference engine restarted; retry"))

    def _loop(self) -> None:
        while True:
            try:
                while self._controls:  # between two batches, before any waiting request
                    self._run_control(self._controls.popleft())
            except Exception:
                self.errors += 1
                log.exception("the inference loop caught an error and goes on")
            item = self._carry.popleft() if self._carry else self._queue.get()
            if item is _STOP:
                self._fail_waiting()
                return
            if item is _WAKE:
                continue
            try:
                batch = self._gather(item)
                self._score_batch(batch)
            except Exception:  # never let one request's failure end the loop
                self.errors += 1
                log.exception("the inference loop caught an error and goes on")

    def _gather(self, first: _Request) -> list[_Request]:
        batch, rows = [first], len(first.suffixes)
        if not self.batching:
            return batch
        deadline = time.perf_counter() + self.max_wait
        while rows < self.max_batch_rows:
            try:
                if self._carry:
                    item = self._carry.popleft()
                else:
                    timeout = deadline - time.perf_counter()
                    item = (
                        self._queue.get(timeout=timeout)
                        if timeout > 0
                        else self._queue.get_nowait()
                    )
            except queue.Empty:
                break
            if item is _WAKE:
                break  # a model change waits: score what we have, then apply it
            if item is _STOP:
                self._carry.appendleft(item)
                break
            if rows + len(item.suffixes) > self.max_batch_rows:
                self._carry.appendleft(item)  # first in the next batch
                break
            batch.append(item)
            rows += len(item.suffixes)
        return batch

    def _run_control(self, control: _Control) -> None:
        if not control.future.set_running_or_notify_cancel():
            return  # whoever asked gave up before it started: do not apply it
        try:
            result = control.action()
        except Exception as exc:  # reported to whoever asked; serving goes on
            _settle(control.future, exc=exc)
            return
        except BaseException:
            _settle(control.future, exc=RuntimeError("the inference engine died applying it"))
            raise
        _settle(control.future, result)

    def _fail_waiting(self, exc: Exception | None = None) -> None:
        error = exc or RuntimeError("the inference engine stopped")
        current, self._current = self._current, []
        for request in current:
            _settle(request.future, exc=error)
        while self._controls:
            _settle(self._controls.popleft().future, exc=error)
        while True:
            try:
                item = self._carry.popleft() if self._carry else self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Request):
                _settle(item.future, exc=error)

    def _score_batch(self, batch: list[_Request]) -> None:
        # A request whose client gave up (timed out, disconnected) is dropped unscored; the
        # others are marked running so they can no longer be cancelled under the loop.
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if len(live) < len(batch) and self.on_dropped is not None:
            self.on_dropped(len(batch) - len(live))
        batch = live
        if not batch:
            return
        self._current = batch  # told of the failure if the loop dies while scoring them
        started = time.perf_counter()
        version = self.version  # fixed for the whole batch: swaps only happen between batches
        rows = sum(len(r.suffixes) for r in batch)
        try:
            results = self._scores(batch)
        except Exception as exc:
            self._current = []
            log.exception("scoring a batch of %d rows failed", rows)
            for request in batch:
                _settle(request.future, exc=exc)
            return
        self._current = []
        for request, scores in zip(batch, results, strict=True):
            wait_ms = (started - request.submitted) * 1000
            _settle(request.future, Scored(scores, version, rows, wait_ms))
        if self.on_batch is not None:
            self.on_batch(len(batch), rows)

    def _scores(self, batch: list[_Request]) -> list[list[float]]:
        bb = self.backbone
        if not self.prefix_reuse:
            prompts = [Prompt(r.prefix, s) for r in batch for s in r.suffixes]
            flat = predict_like(bb, prompts, batch_size=self.max_batch_rows).tolist()
            out, start = [], 0
            for r in batch:
                out.append(flat[start : start + len(r.suffixes)])
                start += len(r.suffixes)
            return out
        encoded = [
            encode_shared_prefix(bb.tokenizer, bb.format, r.prefix, r.suffixes) for r in batch
        ]
        if len(batch) == 1 and len(batch[0].suffixes) > self.max_batch_rows:
            # One request larger than a batch: its candidates in chunks, the prefix per chunk.
            prefix, tails = encoded[0]
            chunks = [
                tails[i : i + self.max_batch_rows]
                for i in range(0, len(tails), self.max_batch_rows)
            ]
            parts = prefix_cached_like(
                bb.model, bb.format, [prefix] * len(chunks), chunks, bb.device
            )
            return [torch.cat(parts).tolist()]
        parts = prefix_cached_like(
            bb.model, bb.format, [e[0] for e in encoded], [e[1] for e in encoded], bb.device
        )
        return [p.tolist() for p in parts]

    def adapter_parameters(self) -> int:
        """LoRA tensors' elements currently held (flat across swaps means nothing leaks)."""
        return self.slot.adapter_parameters()
