"""LoRA in one place: the config every trainer builds, and the one check that an adapter's
weights fit a model before they are used (training, E2URec and the serving engine share both)."""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Literal

from peft import LoraConfig, set_peft_model_state_dict
from torch import nn

from e2urec.backbones import Backbone

if TYPE_CHECKING:
    from e2urec.adapter_files import AdapterFiles

Targets = Literal["qv", "all-linear"]

# peft 0.21 asks every model it wraps for transformers 5's deprecated `is_gradient_checkpointing`
# (the new name is `is_activation_checkpointing`), so each process's first LoRA wrap printed a
# FutureWarning that no caller can act on. Only that message is silenced; drop this when peft
# reads the new name.
warnings.filterwarnings(
    "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
)

# Names of the query/value projections across architectures, most specific first.
_QV_NAMES = [("q_proj", "v_proj"), ("q", "v"), ("query", "value")]
_FUSED_QKV = ("c_attn", "query_key_value", "qkv_proj", "Wqkv")


class AdapterMismatch(ValueError):
    """An adapter's tensors do not match the model they are loaded into."""


def attention_qv_targets(model: nn.Module) -> list[str]:
    """Module names for peft's ``target_modules``: q/v for T5, q_proj/v_proj for Llama-style.

    peft knows these names for the architectures it maps; this scan is the fallback for the
    ones it does not (a GGUF or a custom model)."""
    leaves = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
    }
    for names in _QV_NAMES:
        if set(names) <= leaves:
            return list(names)
    fused = [n for n in _FUSED_QKV if n in leaves]
    if fused:
        return fused
    raise ValueError(
        "cannot find the attention query/value projections of "
        f"{type(model).__name__} (linear layers: {', '.join(sorted(leaves))}); "
        "pass the target module names explicitly"
    )


def layers_of(config: LoraConfig) -> Targets:
    """The layers a saved adapter adapts: "qv" for the attention's query/value projections
    alone, else "all-linear" (a warm start keeps them, whatever a fresh student would get)."""
    targets = config.target_modules
    names = {targets} if isinstance(targets, str) else set(targets or ())
    qv = {name for pair in _QV_NAMES for name in pair} | set(_FUSED_QKV)
    return "qv" if names and names <= qv else "all-linear"


def _qv_targets(model: nn.Module) -> list[str] | None:
    """None where peft maps the architecture to its q/v projections itself, else the scan."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return None if model_type in KNOWN else attention_qv_targets(model)


def lora_config(
    model: nn.Module,
    *,
    r: int,
    alpha: int,
    dropout: float,
    targets: Targets | list[str] | None = "qv",
) -> LoraConfig:
    """A trainable LoRA config for ``model``: ``targets`` is "qv" (the attention query and value
    projections, the paper's and TALLRec's choice), "all-linear", or explicit module names."""
    if targets not in ("qv", "all-linear", None) and not isinstance(targets, list):
        raise ValueError(
            f"LoRA targets must be 'qv', 'all-linear' or module names, got {targets!r}"
        )
    is_seq2seq = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=_qv_targets(model) if targets in ("qv", None) else targets,
        task_type="SEQ_2_SEQ_LM" if is_seq2seq else "CAUSAL_LM",
    )


def trainable_copy(config: LoraConfig) -> LoraConfig:
    """A saved adapter's config made trainable (saved configs are inference-only: frozen)."""
    config = copy.deepcopy(config)
    config.inference_mode = False
    return config


def check_adapter_fits(model: nn.Module, state_dict: dict, source: str) -> None:
    """Raise ``AdapterMismatch`` unless every LoRA tensor of a saved adapter has a module of the
    right shape in ``model`` (a bare base or a peft model), without touching ``model``: a swap
    validates first, so a wrong adapter never half-loads into a serving model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    problems: list[str] = []
    for key, tensor in state_dict.items():
        path, _, kind = key.removeprefix("base_model.model.").rpartition(".lora_")
        if not path or kind not in ("A.weight", "B.weight"):
            problems.append(f"{key} (not a LoRA A/B matrix)")
            continue
        try:
            module = base.get_submodule(path)
        except AttributeError:
            problems.append(f"{path} (no such module)")
            continue
        # A is [rank, in], B is [out, rank]; the rank is the adapter's own (rank_pattern)
        axis, name = (1, "in_features") if kind == "A.weight" else (0, "out_features")
        need = getattr(module, name, None)
        if tensor.dim() != 2 or tensor.shape[axis] != need:
            problems.append(f"{key} has shape {tuple(tensor.shape)}, the module's {name} is {need}")
    if problems:
        raise AdapterMismatch(
            f"{source} does not fit this base model ({len(problems)} tensors), e.g. "
            f"{'; '.join(problems[:3])}; was it trained on another base?"
        )


def load_lora_state(
    model: nn.Module, state_dict: dict, *, adapter_name: str = "default", source: str = "adapter"
) -> None:
    """Load LoRA weights into a peft model, or raise ``AdapterMismatch`` when any tensor is left
    over or any of the adapter's own LoRA tensors is left unset (a different base or rank)."""
    result = set_peft_model_state_dict(model, state_dict, adapter_name=adapter_name)
    missing = [k for k in result.missing_keys if "lora_" in k and f".{adapter_name}." in k]
    if result.unexpected_keys or missing:
        raise AdapterMismatch(
            f"{source} does not fit this base model: {len(missing)} missing and "
            f"{len(result.unexpected_keys)} unexpected tensors"
        )


def with_adapter(base: Backbone, adapter: AdapterFiles) -> Backbone:
    """The base with ``adapter`` merged into a copy of its weights: a frozen model (a teacher, or
    the original a warm-started unlearning starts from)."""
    from peft import get_peft_model

    model = get_peft_model(copy.deepcopy(base.model), trainable_copy(adapter.config))
    load_lora_state(model, adapter.state_dict, source=f"the adapter at {adapter.path}")
    merged = model.merge_and_unload().eval().requires_grad_(False)
    return Backbone(merged, base.tokenizer, base.spec, {"merged_adapter": str(adapter.path)})
