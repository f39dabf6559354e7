"""P(like) = softmax over the "Yes" and "No" logits at the answer position."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from e2urec.backbones import Backbone
from e2urec.data.prompts import Prompt
from e2urec.encoding import PromptFormat, answer_logits, collate, encode_prompts


def yes_probability(logits: torch.Tensor, fmt: PromptFormat) -> torch.Tensor:
    """P(yes) from answer-position logits (or log-probabilities) over the full vocabulary: the
    softmax over the two answer tokens alone."""
    return torch.softmax(logits[:, [fmt.yes_token, fmt.no_token]].float(), -1)[:, 0]


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
    model: torch.nn.Module | None = None,
    progress: bool = False,
    desc: str = "scoring",
) -> np.ndarray:
    """P(yes) for each prompt, in input order (``model`` as in :func:`map_answer_logits`)."""
    scores = map_answer_logits(
        backbone,
        prompts,
        lambda logits: yes_probability(logits, backbone.format),
        batch_size=batch_size,
        model=model,
        progress=progress,
        desc=desc,
    )
    return scores.numpy().astype(np.float64)


@torch.inference_mode()
def prefix_cached_like(
    model: torch.nn.Module,
    fmt: PromptFormat,
    prefixes: Sequence[list[int]],
    suffixes: Sequence[Sequence[list[int]]],
    device: torch.device,
) -> list[torch.Tensor]:
    """P(yes) for every (prefix, suffix) pair, running each prefix once (see
    :func:`prefix_answer_logits`). Returns one tensor per prefix."""
    if fmt.is_seq2seq:
        raise ValueError("prefix reuse needs a causal model; score full prompts for seq2seq")
    counts = [len(s) for s in suffixes]
    if not sum(counts):
        return [torch.empty(0) for _ in suffixes]
    logits = prefix_answer_logits(model, fmt, prefixes, suffixes, device)
    return list(torch.split(yes_probability(logits, fmt).cpu(), counts))


def prefix_answer_logits(
    model: torch.nn.Module,
    fmt: PromptFormat,
    prefixes: Sequence[list[int]],
    suffixes: Sequence[Sequence[list[int]]],
    device: torch.device,
) -> torch.Tensor:
    """Answer-position logits [pairs, vocab] for every (prefix, suffix) pair, in order, running
    each prefix once; differentiable, so training on many candidates of one user pays for the
    user's prompt once too (``e2urec.listwise``).

    The prefixes (one per user) go through the model together, left-padded; their KV cache is
    then repeated once per candidate and the suffixes are scored in one more pass, left-padded
    too (masked gaps between a prefix and its suffix change nothing; positions continue after
    each prefix), so every answer sits at the last position and the LM head runs there only.
    Right-padded, the head ran at every suffix position, a [candidates, width, vocab] tensor
    where [candidates, vocab] is read: a SmolLM2 request of 50 candidates took 1.2x as long
    (bench/results/prefix-scoring-cpu). Causal models only: a seq2seq encoder reads the whole
    prompt both ways, so it has no reusable prefix.
    """
    if fmt.is_seq2seq:
        raise ValueError("prefix reuse needs a causal model; score full prompts for seq2seq")
    counts = [len(s) for s in suffixes]
    if not sum(counts):
        raise ValueError("no suffixes to score")
    p_batch = collate(fmt, prefixes).to(device)
    out = model(
        input_ids=p_batch.input_ids,
        attention_mask=p_batch.attention_mask,
        position_ids=p_batch.position_ids,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = out.cache  # was `past_key_values`, deprecated and removed in transformers 5.40
    rows = torch.tensor([b for b, n in enumerate(counts) for _ in range(n)], device=device)
    cache.batch_select_indices(rows)  # one copy of each user's prefix per candidate
    s_batch = collate(fmt, [s for group in suffixes for s in group]).to(device)
    prefix_len = p_batch.attention_mask.sum(-1)[rows]
    out = model(
        input_ids=s_batch.input_ids,
        attention_mask=torch.cat([p_batch.attention_mask[rows], s_batch.attention_mask], dim=1),
        position_ids=prefix_len[:, None] + s_batch.position_ids,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1]
