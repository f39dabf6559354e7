"""Which modules a LoRA adapter targets: the attention query and value projections."""

from __future__ import annotations

from torch import nn

# Names of the query/value projections across architectures, most specific first.
_QV_NAMES = [("q_proj", "v_proj"), ("q", "v"), ("query", "value")]
_FUSED_QKV = ("c_attn", "query_key_value", "qkv_proj", "Wqkv")


def attention_qv_targets(model: nn.Module) -> list[str]:
    """Module names for peft's ``target_modules``: q/v for T5, q_proj/v_proj for Llama-style."""
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
