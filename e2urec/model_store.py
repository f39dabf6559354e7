"""Saving a trained LLMRec as an HF folder with its tokenizer and an ``e2urec.json`` manifest.

The manifest ties the model to the exact data it saw (the prepared data's hash and split seed),
how it was trained and how well it did, so that unlearning and serving can check what they load.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
import transformers

import e2urec
from e2urec.atomic import atomic_folder
from e2urec.backbones import Backbone, load_backbone

MANIFEST = "e2urec.json"


def save_model(
    backbone: Backbone, out: Path | str, manifest: dict, *, overwrite: bool = False
) -> Path:
    """Write the model folder atomically: a crash never leaves a half-saved model at ``out``."""
    out = Path(out)
    with atomic_folder(out, overwrite=overwrite) as tmp:
        backbone.save(tmp)
        full = {
            **manifest,
            "backbone": backbone.spec,
            "architecture": type(backbone.model).__name__,
            "is_seq2seq": backbone.is_seq2seq,
            "answer_tokens": {
                "yes": [
                    backbone.format.yes_token,
                    backbone.tokenizer.convert_ids_to_tokens(backbone.format.yes_token),
                ],
                "no": [
                    backbone.format.no_token,
                    backbone.tokenizer.convert_ids_to_tokens(backbone.format.no_token),
                ],
            },
            "parameters": backbone.parameter_count(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": {
                "e2urec": e2urec.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, default=str))
    return out


def read_manifest(path: Path | str) -> dict:
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no {MANIFEST}: it was not written by `e2urec train`")
    return json.loads(file.read_text())


def load_model(path: Path | str, device: str | None = None) -> tuple[Backbone, dict]:
    """Load a model written by :func:`save_model`, with its manifest."""
    manifest = read_manifest(path)
    return load_backbone(str(path), device=device), manifest
