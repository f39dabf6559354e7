"""A listwise loss over candidate lists (``e2urec.data.lists``), for a reranker that is to put
what the user goes on to rate and like ahead of the candidate stage's own order.

Serving orders candidates by log stage score + log P(like) (``e2urec.recommend.blended_order``
at weight 1). The loss is the cross-entropy of that very key's softmax over one list against
the list's positives, so P(like) learns the correction the candidate stage needs, not the order
the stage already has. Causal models read the user's prompt once per list and every candidate
after it through the KV cache (``prefix_answer_logits``), so a list of 20 costs about two
prompts rather than twenty; seq2seq models read full prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from e2urec.data.lists import CandidateList
from e2urec.data.prepared import Catalog
from e2urec.encoding import (
    PromptFormat,
    answer_logits,
    collate,
    encode_prompts,
    encode_shared_prefix,
)
from e2urec.scoring import prefix_answer_logits


@dataclass(frozen=True)
class EncodedList:
    prefix: list[int]  # causal: the user's prompt; seq2seq: empty
    suffixes: list[list[int]]  # causal: one per candidate; seq2seq: whole prompts
    log_stage: torch.Tensor  # [items]
    positive: torch.Tensor  # [items], bool


def encode_lists(
    tokenizer, fmt: PromptFormat, catalog: Catalog, lists: Sequence[CandidateList]
) -> list[EncodedList]:
    out = []
    for lst in lists:
        prompts = [catalog.prompt_for(lst.user_id, lst.history, i) for i in lst.items]
        if fmt.is_seq2seq:
            prefix, suffixes = [], encode_prompts(tokenizer, fmt, prompts)
        else:
            prefix, suffixes = encode_shared_prefix(
                tokenizer, fmt, prompts[0].prefix, [p.suffix for p in prompts]
            )
        out.append(
            EncodedList(
                prefix,
                suffixes,
                torch.log(torch.tensor(lst.stage_scores, dtype=torch.float32)),
                torch.tensor(lst.positive, dtype=torch.bool),
            )
        )
    return out


def list_answer_logits(
    model, fmt: PromptFormat, lists: Sequence[EncodedList], device: torch.device
) -> torch.Tensor:
    """[candidates of all lists, vocab] answer-position logits, lists in order, with grad."""
    if fmt.is_seq2seq:
        batch = collate(fmt, [s for lst in lists for s in lst.suffixes]).to(device)
        return answer_logits(model, batch)
    return prefix_answer_logits(
        model, fmt, [lst.prefix for lst in lists], [lst.suffixes for lst in lists], device
    )


def list_loss(
    logits: torch.Tensor, fmt: PromptFormat, lists: Sequence[EncodedList]
) -> torch.Tensor:
    """Mean over lists of -mean over positives of log softmax(log stage + log P(like)).

    ``logits`` are :func:`list_answer_logits`' rows. log P(like) is the log-sigmoid of the
    yes-minus-no margin, the log of exactly what scoring reads."""
    pair = logits[:, [fmt.yes_token, fmt.no_token]].float()
    log_like = torch.nn.functional.logsigmoid(pair[:, 0] - pair[:, 1])
    losses = []
    parts = torch.split(log_like, [len(x.suffixes) for x in lists])
    for lst, part in zip(lists, parts, strict=True):
        keys = lst.log_stage.to(part.device) + part
        log_p = torch.log_softmax(keys, dim=0)
        losses.append(-log_p[lst.positive.to(part.device)].mean())
    return torch.stack(losses).mean()


def stage_only_loss(lists: Sequence[EncodedList]) -> float:
    """:func:`list_loss` with P(like) the same for every candidate: the candidate stage's order
    alone, the reference a trained model's list loss has to go below."""
    losses = [-torch.log_softmax(x.log_stage, dim=0)[x.positive].mean() for x in lists]
    return float(torch.stack(losses).mean())


@torch.no_grad()
def mean_list_loss(backbone, lists: Sequence[EncodedList], chunk: int = 8) -> float:
    """Mean :func:`list_loss` over ``lists``, in eval mode, a few lists at a time."""
    model, was_training = backbone.model, backbone.model.training
    model.eval()
    try:
        total = 0.0
        for start in range(0, len(lists), chunk):
            part = lists[start : start + chunk]
            logits = list_answer_logits(model, backbone.format, part, backbone.device)
            total += list_loss(logits, backbone.format, part).item() * len(part)
    finally:
        model.train(was_training)
    return total / len(lists)
