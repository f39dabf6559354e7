"""From prompts to token ids and batches, for causal and seq2seq backbones alike.

Causal models read ``[specials] prefix suffix cue`` and answer after the cue; seq2seq models
encode ``prefix suffix [specials]`` and answer at the first decoder position. Targets are the
paper's "Yes." / "No.". The answer tokens are read off the tokenizer, never hard-coded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from e2urec.data.prompts import Prompt

ANSWER_CUE = "\nAnswer:"  # causal models only; seq2seq decoders start the answer themselves
YES, NO = "Yes.", "No."


def _special_wrapping(tokenizer, probe: str = "movie night") -> tuple[list[int], list[int]]:
    """The special ids the tokenizer adds before and after text (e.g. BOS, or T5's EOS)."""
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


@dataclass(frozen=True)
class PromptFormat:
    is_seq2seq: bool
    start_ids: tuple[int, ...]
    end_ids: tuple[int, ...]
    cue_ids: tuple[int, ...]
    yes_ids: tuple[int, ...]  # the whole target, ending in EOS
    no_ids: tuple[int, ...]
    pad_id: int
    decoder_start_id: int | None
    max_prompt_tokens: int

    @classmethod
    def for_backbone(cls, backbone) -> PromptFormat:
        tok, config = backbone.tokenizer, backbone.model.config
        seq2seq = bool(config.is_encoder_decoder)
        start, end = _special_wrapping(tok)
        space = (
            "" if seq2seq else " "
        )  # after the cue, BPE vocabularies spell the word with a space
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        yes = tok(space + YES, add_special_tokens=False)["input_ids"] + eos
        no = tok(space + NO, add_special_tokens=False)["input_ids"] + eos
        if yes[0] == no[0]:
            raise ValueError(
                f"the tokenizer of {backbone.spec} starts {YES!r} and {NO!r} with the same token, "
                "so P(yes) cannot be read at one position; use a tokenizer with distinct "
                "answer tokens"
            )
        limit = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", 0
        )
        return cls(
            is_seq2seq=seq2seq,
            start_ids=tuple(start),
            end_ids=tuple(end),
            cue_ids=()
            if seq2seq
            else tuple(tok(ANSWER_CUE, add_special_tokens=False)["input_ids"]),
            yes_ids=tuple(yes),
            no_ids=tuple(no),
            pad_id=tok.pad_token_id,
            decoder_start_id=config.decoder_start_token_id if seq2seq else None,
            # T5's relative positions have no hard limit; keep batches bounded all the same.
            max_prompt_tokens=min(limit or 1024, 2048) - 16,
        )

    @property
    def yes_token(self) -> int:
        return self.yes_ids[0]

    @property
    def no_token(self) -> int:
        return self.no_ids[0]

    def target(self, label: int) -> tuple[int, ...]:
        return self.yes_ids if label else self.no_ids


def encode_prompts(tokenizer, fmt: PromptFormat, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Token ids of whole model inputs (without targets); prefix and suffix tokenised apart."""
    if not prompts:
        return []
    prefixes = tokenizer([p.prefix for p in prompts], add_special_tokens=False)["input_ids"]
    suffixes = tokenizer([p.suffix for p in prompts], add_special_tokens=False)["input_ids"]
    out = []
    budget = fmt.max_prompt_tokens - len(fmt.start_ids) - len(fmt.end_ids) - len(fmt.cue_ids)
    for prefix, suffix in zip(prefixes, suffixes, strict=True):
        overflow = len(prefix) + len(suffix) - budget
        if overflow > 0:  # drop the oldest history first; the target item must stay
            prefix = prefix[overflow:]
        out.append([*fmt.start_ids, *prefix, *suffix, *fmt.end_ids, *fmt.cue_ids])
    return out


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None = None  # causal only
    labels: torch.Tensor | None = None
    decoder_input_ids: torch.Tensor | None = None  # seq2seq scoring only
    target_len: int = 0  # causal training: how many trailing positions carry targets

    def to(self, device: torch.device) -> Batch:
        moved = {
            k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in self.__dict__.items()
        }
        return Batch(**moved)


def collate(
    fmt: PromptFormat, inputs: Sequence[list[int]], labels: Sequence[int] | None = None
) -> Batch:
    """Pad a batch. Causal batches are left-padded so every answer sits at the last position,
    with explicit position ids so padding does not shift positions (scores match unbatched ones)."""
    targets = [fmt.target(y) for y in labels] if labels is not None else None
    if fmt.is_seq2seq:
        width = max(map(len, inputs))
        ids = torch.full((len(inputs), width), fmt.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(inputs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        if targets is None:
            start = torch.full((len(inputs), 1), fmt.decoder_start_id, dtype=torch.long)
            return Batch(ids, mask, decoder_input_ids=start)
        t_width = max(map(len, targets))
        lab = torch.full((len(inputs), t_width), -100, dtype=torch.long)
        for row, t in enumerate(targets):
            lab[row, : len(t)] = torch.tensor(t)
        return Batch(ids, mask, labels=lab)

    seqs = [list(s) + list(t) for s, t in zip(inputs, targets, strict=True)] if targets else inputs
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), fmt.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if targets is None:
        return Batch(ids, mask, positions)
    t_width = max(map(len, targets))
    lab = torch.full((len(seqs), t_width), -100, dtype=torch.long)
    for row, t in enumerate(targets):
        lab[row, t_width - len(t) :] = torch.tensor(t)
    return Batch(ids, mask, positions, labels=lab, target_len=t_width)


def answer_logits(model, batch: Batch) -> torch.Tensor:
    """Full-vocabulary logits at the answer position, shape [batch, vocab]."""
    if batch.decoder_input_ids is not None:
        out = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            decoder_input_ids=batch.decoder_input_ids,
        )
        return out.logits[:, 0]
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=1,
    )
    return out.logits[:, -1]


def target_logits(model, batch: Batch) -> torch.Tensor:
    """Logits predicting each target token, [batch, target_len, vocab], aligned with labels."""
    if batch.labels is None:
        raise ValueError("target_logits needs a batch collated with labels")
    if model.config.is_encoder_decoder:
        return model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
        ).logits
    # Only the trailing positions predict targets: skip the LM head everywhere else.
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=batch.target_len + 1,
    )
    return out.logits[:, :-1]


def target_loss(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over target tokens, and the logits at the answer position [B, V]."""
    logits = target_logits(model, batch)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), batch.labels.reshape(-1), ignore_index=-100
    )
    # The answer token is each row's first non-ignored label.
    first = (batch.labels != -100).int().argmax(dim=1)
    return loss, logits[torch.arange(logits.size(0)), first]


def answer_loss(
    model, fmt: PromptFormat, batch: Batch, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the label under P(yes) = softmax over the two answer tokens: exactly the
    quantity scoring reads, and all a pretrained LLM has to learn (the full stop and EOS after
    the answer are trivial, yet two thirds of :func:`target_loss`'s gradient on SmolLM2).
    ``batch`` is collated without labels; returns the loss and the answer-position logits."""
    logits = answer_logits(model, batch)
    pair = logits[:, [fmt.no_token, fmt.yes_token]].float()  # class index = label
    return torch.nn.functional.cross_entropy(pair, labels.long()), logits


def encode_shared_prefix(
    tokenizer, fmt: PromptFormat, prefix: str, suffixes: Sequence[str]
) -> tuple[list[int], list[list[int]]]:
    """One prefix and many suffixes, tokenised apart exactly as :func:`encode_prompts` does:
    ``prefix_ids + suffix_ids[i]`` equals the full prompt's ids whenever it fits the model (if
    not, the oldest history is dropped by the longest suffix's needs, once for all)."""
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    tails = tokenizer(list(suffixes), add_special_tokens=False)["input_ids"] if suffixes else []
    budget = fmt.max_prompt_tokens - len(fmt.start_ids) - len(fmt.end_ids) - len(fmt.cue_ids)
    overflow = len(prefix_ids) + max(map(len, tails), default=0) - budget
    if overflow > 0:
        prefix_ids = prefix_ids[overflow:]
    return [*fmt.start_ids, *prefix_ids], [[*t, *fmt.end_ids, *fmt.cue_ids] for t in tails]
