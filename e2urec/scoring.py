"""P(like) = softmax over the "Yes" and "No" logits at the answer position."""

from __future__ import annotations

from collections.abc import Sequence

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
def answer_distributions(
    backbone: Backbone,
    prompts: Sequence[Prompt],
    *,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "scoring",
) -> torch.Tensor:
    """Full-vocabulary log-probabilities at the answer position, [len(prompts), vocab], on CPU."""
    fmt = backbone.format
    encoded = encode_prompts(backbone.tokenizer, fmt, prompts)
    out = None
    was_training = backbone.model.training
    backbone.model.eval()
    try:
        batches = length_batches([len(e) for e in encoded], batch_size)
        for idx in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
            batch = collate(fmt, [encoded[i] for i in idx]).to(backbone.device)
            logp = torch.log_softmax(answer_logits(backbone.model, batch).float(), dim=-1).cpu()
            if out is None:
                out = torch.empty(len(prompts), logp.size(-1))
            out[idx] = logp
    finally:
        backbone.model.train(was_training)
    return out if out is not None else torch.empty(0, 0)


@torch.inference_mode()
def predict_like(
    backbone: Backbone,
    prompts: Sequence[Prompt],
    *,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "scoring",
) -> np.ndarray:
    """P(yes) for each prompt, in input order."""
    fmt = backbone.format
    encoded = encode_prompts(backbone.tokenizer, fmt, prompts)
    scores = np.empty(len(prompts), dtype=np.float64)
    pair = torch.tensor([fmt.yes_token, fmt.no_token], device=backbone.device)
    was_training = backbone.model.training
    backbone.model.eval()
    try:
        for idx in tqdm(
            length_batches([len(e) for e in encoded], batch_size),
            desc=desc,
            disable=not progress,
            unit="batch",
        ):
            batch = collate(fmt, [encoded[i] for i in idx]).to(backbone.device)
            yes_no = answer_logits(backbone.model, batch).index_select(-1, pair).float()
            scores[idx] = torch.softmax(yes_no, dim=-1)[:, 0].cpu().numpy()
    finally:
        backbone.model.train(was_training)
    return scores
