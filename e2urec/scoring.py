"""P(like) = softmax over the "Yes" and "No" logits at the answer position."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from e2urec.backbones import Backbone
from e2urec.data.prompts import Prompt
from e2urec.encoding import answer_logits, collate, encode_prompts


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so padding stays small."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def map_answer_logits(
    backbone: Backbone,
    prompts: Sequence[Prompt],
    reduce: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 64,
    model: torch.nn.Module | None = None,
    progress: bool = False,
    desc: str = "scoring",
) -> torch.Tensor:
    """``reduce`` applied to the answer-position logits of every prompt, batched by length, in
    eval mode; rows come back in input order, on the CPU. ``model`` defaults to the backbone's
    (pass another of the same architecture and tokenizer, e.g. a teacher)."""
    model = model or backbone.model
    fmt = backbone.format
    encoded = encode_prompts(backbone.tokenizer, fmt, prompts)
    out = None
    was_training = model.training
    model.eval()
    try:
        batches = length_batches([len(e) for e in encoded], batch_size)
        for idx in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
            batch = collate(fmt, [encoded[i] for i in idx]).to(backbone.device)
            rows = reduce(answer_logits(model, batch)).cpu()
            if out is None:
                out = torch.empty((len(prompts), *rows.shape[1:]), dtype=rows.dtype)
            out[idx] = rows
    finally:
        model.train(was_training)
    return out if out is not None else torch.empty(0)


def answer_distributions(
    backbone: Backbone,
    prompts: Sequence[Prompt],
    *,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "scoring",
) -> torch.Tensor:
    """Full-vocabulary log-probabilities at the answer position, [len(prompts), vocab], on CPU."""
    return map_answer_logits(
        backbone,
        prompts,
        lambda logits: torch.log_softmax(logits.float(), dim=-1),
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )


def predict_like(
    backbone: Backbone,
    prompts: Sequence[Prompt],
    *,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "scoring",
) -> np.ndarray:
    """P(yes) for each prompt, in input order."""
    pair = [backbone.format.yes_token, backbone.format.no_token]
    scores = map_answer_logits(
        backbone,
        prompts,
        lambda logits: torch.softmax(logits[:, pair].float(), dim=-1)[:, 0],
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    return scores.numpy().astype(np.float64)
