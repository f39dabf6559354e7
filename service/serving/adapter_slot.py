"""The serving model and the one place it changes (after vLLM's LoRA manager and peft's
hotswap): an adapter is validated against the base before the model is touched, then applied,
probed with the worker's recorded prompts, and undone if anything fails; or a whole new base
replaces the old one. The engine calls these between two batches."""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass

import torch
from peft import PeftModel, get_peft_model

from e2urec.adapter_files import AdapterFiles
from e2urec.backbones import Backbone
from e2urec.data.prompts import Prompt
from e2urec.lora import AdapterMismatch, check_adapter_fits, load_lora_state
from e2urec.scoring import predict_like


@dataclass(frozen=True)
class ModelVersion:
    """What scored a response: a base model and, on top of it, an adapter (or none)."""

    base: int | None
    adapter: int | None = None

    @property
    def label(self) -> str:
        base = f"base-{self.base}" if self.base is not None else "base"
        return base if self.adapter is None else f"{base}/adapter-{self.adapter}"


@dataclass
class SwapReport:
    version: ModelVersion
    seconds: float  # how long serving paused between the two batches
    probes: int
    max_probe_error: float


class SwapError(RuntimeError):
    """A new adapter failed its smoke test or could not be applied; the old one still serves."""


class AdapterSlot:
    def __init__(
        self,
        backbone: Backbone,
        version: ModelVersion,
        *,
        probe_tolerance: float = 1e-3,
        probe_batch_rows: int = 64,
    ):
        self.backbone = backbone
        self.version = version
        self.probe_tolerance = probe_tolerance
        self.probe_batch_rows = probe_batch_rows
        self._adapter_name: str | None = None
        backbone.model.requires_grad_(False).eval()

    def apply_adapter(self, adapter: AdapterFiles | None, version: ModelVersion) -> SwapReport:
        started = time.perf_counter()
        model = self.backbone.model
        old_name = self._adapter_name
        if adapter is None:
            if isinstance(model, PeftModel):
                self.backbone.model = model.unload()  # the base's own modules, LoRA removed
            self._adapter_name = None
            self.version = version
            self._release()
            return SwapReport(version, time.perf_counter() - started, 0, 0.0)

        name = f"v{version.adapter}"
        fresh_wrap = not isinstance(model, PeftModel)
        if not fresh_wrap and name in model.peft_config:  # same version again: nothing to do
            self.version = version
            return SwapReport(version, time.perf_counter() - started, 0, 0.0)
        try:  # validate before touching the model: a wrong adapter never half-loads
            check_adapter_fits(model, adapter.state_dict, f"adapter {version.label}")
        except AdapterMismatch as exc:
            raise SwapError(str(exc)) from exc
        try:
            if fresh_wrap:
                model = get_peft_model(model, adapter.config, adapter_name=name)
            else:
                model.add_adapter(name, adapter.config)
            try:
                load_lora_state(
                    model, adapter.state_dict, adapter_name=name, source=f"adapter {version.label}"
                )
            except AdapterMismatch as exc:
                raise SwapError(str(exc)) from exc
            model.set_adapter(name)
            model.requires_grad_(False).eval()
            self.backbone.model = model
            error = self._smoke_test(adapter.metadata.get("probes", []), version)
        except Exception as exc:
            self._undo_adapter(model, name, old_name, fresh_wrap)
            if isinstance(exc, SwapError):
                raise
            raise SwapError(f"loading adapter {version.label} failed: {exc}") from exc
        if old_name is not None and old_name != name:
            model.delete_adapter(old_name)
        self._adapter_name = name
        self.version = version
        self._release()
        return SwapReport(
            version, time.perf_counter() - started, len(adapter.metadata.get("probes", [])), error
        )

    def _undo_adapter(self, model, name: str, old_name: str | None, fresh_wrap: bool) -> None:
        if not isinstance(model, PeftModel) or name not in model.peft_config:
            return
        if fresh_wrap:
            self.backbone.model = model.unload()
        else:
            if old_name is not None:
                model.set_adapter(old_name)
            model.delete_adapter(name)
            self.backbone.model = model.requires_grad_(False)
        self._release()

    def _smoke_test(self, probes: list[dict], version: ModelVersion) -> float:
        """Score the probe prompts the worker recorded with this adapter; the scores must match
        (same adapter on the same base) and be finite probabilities."""
        if not probes:
            return 0.0
        prompts = [Prompt(p["prefix"], p["suffix"]) for p in probes]
        got = predict_like(self.backbone, prompts, batch_size=self.probe_batch_rows).tolist()
        worst = 0.0
        for probe, value in zip(probes, got, strict=True):
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise SwapError(f"adapter {version.label} gives P(like)={value} on a probe")
            if "p_like" in probe:
                worst = max(worst, abs(value - probe["p_like"]))
        if worst > self.probe_tolerance:
            raise SwapError(
                f"adapter {version.label} failed its smoke test: probe scores differ from the "
                f"worker's by up to {worst:.2e} (tolerance {self.probe_tolerance:.0e}); is it "
                "trained on another base model?"
            )
        return worst

    def apply_base(self, backbone: Backbone, version: ModelVersion) -> SwapReport:
        started = time.perf_counter()
        backbone.model.requires_grad_(False).eval()
        self.backbone = backbone
        self._adapter_name = None
        self.version = version
        self._release()
        return SwapReport(version, time.perf_counter() - started, 0, 0.0)

    def _release(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def adapter_parameters(self) -> int:
        """LoRA tensors' elements currently held (flat across swaps means nothing leaks)."""
        return sum(p.numel() for n, p in self.backbone.model.named_parameters() if "lora_" in n)
