"""Teacher outputs at the answer position, computed once per sample and reused every epoch.

Both E2URec teachers are frozen, so their answer-position distributions never change during
unlearning; running them at every step (as the paper's code does) triples the forward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from e2urec.backbones import Backbone
from e2urec.data.prompts import Prompt
from e2urec.scoring import map_answer_logits


def answer_logits_all(
    backbone: Backbone, prompts: Sequence[Prompt], *, batch_size: int = 64, model=None
) -> torch.Tensor:
    """Raw answer-position logits [N, vocab] (float32, CPU) of ``model`` (default: the
    backbone's own)."""
    return map_answer_logits(
        backbone, prompts, lambda logits: logits.float(), batch_size=batch_size, model=model
    )


def forced_logits(
    orig: torch.Tensor, aug: torch.Tensor, alpha: float, centre_on: list[int] | None = None
) -> torch.Tensor:
    """The forgetting teacher: push down whatever the augmented model learned beyond the original,
    ``orig - alpha * relu(aug - orig)``, on normalised logits.

    Logits are defined only up to a per-row constant (softmax ignores it), and fitting the
    augmented model can shift every logit at once: raw differences then fire on thousands of
    unrelated tokens and miss the answer token whose probability actually rose. So both are
    normalised first, one of two ways:

    * ``centre_on=None``: log-softmax, so ``aug - orig`` is the change in log-probability. The
      token a memorised sample's label names already sits near log-probability 0, so the change
      saturates on exactly the samples memorised hardest.
    * ``centre_on=[yes, no]``: each row minus the mean of those columns' logits, so on the answer
      ``aug - orig`` is half the change in the answer's log-odds, which does not saturate (the
      "margin" form, ``E2URecConfig.teacher_form``).
    """
    if centre_on is None:
        orig, aug = torch.log_softmax(orig.float(), -1), torch.log_softmax(aug.float(), -1)
    else:
        orig, aug = centred(orig.float(), centre_on), centred(aug.float(), centre_on)
    return push_down(orig, aug, alpha)


def centred(logits: torch.Tensor, columns: list[int]) -> torch.Tensor:
    """Each row minus the mean of its ``columns``: a shared shift of the row cancels."""
    return logits - logits[:, columns].mean(-1, keepdim=True)


def push_down(orig_logp: torch.Tensor, aug_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """``orig - alpha * relu(aug - orig)`` on log-probabilities: :func:`forced_logits` once both
    are normalised. Elementwise, so it also gives the teacher's answer columns alone from the
    original's and the augmented model's answer columns."""
    return orig_logp - alpha * torch.relu(aug_logp - orig_logp)


def heldout_matched_logits(
    orig_forget: torch.Tensor,
    forget_labels: Sequence[int],
    orig_heldout: torch.Tensor,
    heldout_labels: Sequence[int],
    answer_cols: list[int],
) -> torch.Tensor:
    """The "held-out" forgetting teacher: the original's answers on the forget set, with each
    sample's confidence in its own label mapped onto the original's confidence on samples it
    never trained on (the audit users), and never raised.

    Confidence is the label's log-odds over the two answers. The forget set's are shifted and
    scaled so that their mean and spread match the held-out samples' (a loss-threshold attack
    then sees the two alike), and each sample keeps its rank, so the teacher still prefers what
    the original prefers among the forget samples. No augmented model: what training on the
    forget set added is read off the original's gap to never-trained data, not estimated by
    training more on it. Returns the forget rows' logits, centred on the answer columns (the
    rest of each row unchanged up to that shift)."""
    if len(orig_heldout) < 2:
        raise ValueError(
            f"the held-out teacher needs the original's answers on at least 2 held-out samples, "
            f"got {len(orig_heldout)}; give the task held-out users (UnlearnTask.heldout) or "
            "validation samples"
        )

    def label_log_odds(logits: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
        sign = torch.tensor([1.0 if y == 1 else -1.0 for y in labels], dtype=torch.float64)
        yes, no = logits[:, answer_cols[0]].double(), logits[:, answer_cols[1]].double()
        return sign * (yes - no), sign

    x, sign = label_log_odds(orig_forget, forget_labels)
    h, _ = label_log_odds(orig_heldout, heldout_labels)
    spread = h.std() / x.std().clamp_min(1e-6) if len(x) > 1 else torch.tensor(1.0)
    mapped = torch.minimum(x, h.mean() + (x - x.mean()) * spread)
    out = centred(orig_forget.float(), answer_cols)
    half = (sign * mapped / 2).float()  # centred: yes = m / 2, no = -m / 2 for yes log-odds m
    out[:, answer_cols[0]], out[:, answer_cols[1]] = half, -half
    return out


def soft_cross_entropy(teacher_logp: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) up to the teacher's entropy (a constant): ``-sum p_t log q_s``,
    averaged over the batch. The paper's code calls this term KL."""
    student_logp = torch.log_softmax(student_logits.float(), dim=-1)
    return -(teacher_logp.exp() * student_logp).sum(-1).mean()


def kl_divergence(teacher_logp: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student), averaged over the batch."""
    student_logp = torch.log_softmax(student_logits.float(), dim=-1)
    return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1).mean()


def vocab_size(backbone: Backbone) -> int:
    return backbone.model.get_output_embeddings().weight.shape[0]


class LazyTeacher:
    """A frozen teacher's answer distribution, computed the first time a sample is drawn and kept
    (float16) after that: no sample is run twice, and none that is never drawn is run at all.
    With ``cache=False`` it runs the teacher on every call, as the paper's code does."""

    def __init__(
        self,
        n: int,
        vocab: int,
        compute: Callable[[list[int]], torch.Tensor],
        model: torch.nn.Module,
        cache: bool = True,
    ):
        self.compute = compute  # sample indices -> raw answer logits
        self.model = model  # put in eval mode while the teacher runs
        self.cache = cache
        self.logp = torch.zeros(n, vocab, dtype=torch.float16) if cache else None
        self.known = torch.zeros(n, dtype=torch.bool)
        self.forward_passes = 0

    @torch.no_grad()
    def get(self, idx: list[int]) -> torch.Tensor:
        rows = torch.tensor(idx)
        missing = rows[~self.known[rows]] if self.cache else rows
        if len(missing):
            was = self.model.training
            self.model.eval()
            try:
                logits = self.compute(missing.tolist()).float().cpu()
            finally:
                self.model.train(was)
            self.forward_passes += 1
            fresh = torch.log_softmax(logits, -1)
            if not self.cache:
                return fresh
            self.logp[missing] = fresh.half()
            self.known[missing] = True
        return self.logp[rows].float()
