"""LoRA adapter folders as the registry stores them: written atomically with a checksum, read
back only if the checksum still matches."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file

from e2urec.atomic import atomic_folder, folder_sha256

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
METADATA = "unlearn.json"


class AdapterFileError(RuntimeError):
    """An adapter folder that is missing, incomplete or not what the registry recorded."""


@dataclass
class AdapterFiles:
    path: Path
    checksum: str
    config: LoraConfig
    state_dict: dict[str, torch.Tensor]
    metadata: dict = field(default_factory=dict)


def write_adapter(model: PeftModel, out: Path, metadata: dict, *, overwrite: bool = False) -> str:
    """Save ``model``'s adapter (peft ``save_pretrained``, safetensors) plus ``metadata`` into
    ``out`` all at once (temporary folder, fsync, rename); returns the folder's checksum."""
    with atomic_folder(Path(out), overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / METADATA).write_text(json.dumps(metadata, indent=2, default=str))
        checksum = folder_sha256(tmp)
    return checksum


def read_adapter(path: Path | str, checksum: str | None = None) -> AdapterFiles:
    """Load an adapter folder into memory (CPU tensors), verifying ``checksum`` first."""
    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        raise AdapterFileError(f"{path} is not an adapter folder (needs {WEIGHTS} and {CONFIG})")
    actual = folder_sha256(path)
    if checksum is not None and actual != checksum:
        raise AdapterFileError(
            f"checksum mismatch for {path}: registry says {checksum[:12]}, files give "
            f"{actual[:12]}; the folder was changed or is incomplete"
        )
    config = LoraConfig.from_pretrained(str(path))
    metadata = json.loads((path / METADATA).read_text()) if (path / METADATA).is_file() else {}
    return AdapterFiles(path, actual, config, load_file(str(path / WEIGHTS)), metadata)
