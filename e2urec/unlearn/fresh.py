"""What a model is trained from: the original's architecture with fresh weights, or the
pretrained backbone it was fine-tuned from (Retrain, the shards and Bad-T's incompetent teacher
start here)."""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from e2urec.backbones import Backbone, load_backbone


def fresh_model(original: Backbone) -> torch.nn.Module:
    """The original's architecture with fresh random weights."""
    auto = AutoModelForSeq2SeqLM if original.is_seq2seq else AutoModelForCausalLM
    return auto.from_config(copy.deepcopy(original.model.config))


def fresh_base(original: Backbone, base_spec: str, seed: int = 0) -> Backbone:
    """What the original was trained from (its manifest's ``backbone``): a tiny preset's
    architecture and catalogue tokenizer with fresh weights, or the pretrained backbone."""
    if base_spec in ("tiny", "tiny-t5"):
        torch.manual_seed(seed)
        model = fresh_model(original).to(original.device).eval()
        return Backbone(model, original.tokenizer, base_spec, {"source": "fresh"})
    return load_backbone(base_spec, device=original.device)
