"""How good an unlearned model is: utility on test, distance to the retrained model on the forget
set, and whether a membership-inference attack can still spot the forget set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch

from e2urec.backbones import Backbone
from e2urec.data.prepared import Catalog
from e2urec.data.samples import Sample
from e2urec.encoding import PromptFormat
from e2urec.metrics import (
    answer_mass,
    confidence,
    distribution_distance,
    jsd_per_sample,
    log_loss,
    mia_auc,
    sample_log_loss,
    utility,
)
from e2urec.scoring import answer_distributions, yes_probability

if TYPE_CHECKING:
    from e2urec.unlearn.base import TeacherAnswers
    from e2urec.unlearn.ensemble import Ensemble

# Strengths at which the forgetting teacher is judged beside the one it used: 0 is the original
# itself, 2 the paper's, 32 the calibration's ceiling.
TEACHER_STRENGTHS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


class Answers(NamedTuple):
    """A model's full-vocabulary answer-position log-probabilities on the forget set and on the
    held-out samples (never trained on by any model)."""

    forget: torch.Tensor
    heldout: torch.Tensor


def evaluate(
    model: Backbone | Ensemble,
    catalog: Catalog,
    test: Sequence[Sample],
    forget: Sequence[Sample],
    heldout: Sequence[Sample],
    reference: Answers | None = None,
    *,
    batch_size: int = 128,
    progress: bool = False,
) -> tuple[dict[str, float], Answers]:
    """Metrics of one model, and its answer distributions (to reuse as a reference).

    ``reference`` is the retrained model's answers; JSD and L2 on ``forget`` are reported against
    it, and the answer JSD on ``heldout`` beside them. The attack separates ``forget`` (members)
    from ``heldout``.
    """

    def p_yes(logp: torch.Tensor) -> list[float]:
        return yes_probability(logp, model.format).tolist()

    prompts = [catalog.prompt(s) for s in (*test, *forget, *heldout)]
    if hasattr(model, "answer_log_probs"):  # an ensemble mixes its members' distributions
        logp = model.answer_log_probs(prompts, batch_size=batch_size)
    else:
        logp = answer_distributions(
            model, prompts, batch_size=batch_size, progress=progress, desc="evaluating"
        )
    n_test, n_forget = len(test), len(forget)
    test_lp, forget_lp, held_lp = (
        logp[:n_test],
        logp[n_test : n_test + n_forget],
        logp[n_test + n_forget :],
    )
    test_p = p_yes(test_lp)
    metrics = utility([s.label for s in test], test_p, [s.user_id for s in test])
    metrics["test_confidence"] = confidence(test_p)
    metrics |= attack(forget_lp, held_lp, forget, heldout, model.format)
    answer_tokens = (model.format.yes_token, model.format.no_token)
    # Read beside JSD: how much of the full-vocabulary distance can lie off the two answers
    metrics["answer_mass"] = answer_mass(forget_lp, answer_tokens)
    if reference is not None:
        metrics.update(distances_to(Answers(forget_lp, held_lp), reference, answer_tokens))
    return metrics, Answers(forget_lp, held_lp)


def attack(
    forget_lp: torch.Tensor,
    heldout_lp: torch.Tensor,
    forget: Sequence[Sample],
    heldout: Sequence[Sample],
    fmt: PromptFormat,
) -> dict[str, float]:
    """What an attacker sees: the loss-threshold attack's AUC separating ``forget`` (members)
    from ``heldout``, both sets' LogLoss (the held-out one beside it, so that a model that got
    worse everywhere is not read as forgetting) and both sets' confidence (so that one that only
    grew unsure everywhere is not either)."""
    member_labels, nonmember_labels = [s.label for s in forget], [s.label for s in heldout]
    member_p = yes_probability(forget_lp, fmt).tolist()
    nonmember_p = yes_probability(heldout_lp, fmt).tolist()
    member = sample_log_loss(member_labels, member_p)
    nonmember = sample_log_loss(nonmember_labels, nonmember_p)
    return {
        "mia_auc": mia_auc(member, nonmember, member_labels, nonmember_labels),
        "forget_logloss": float(member.mean()),
        "heldout_logloss": float(nonmember.mean()),
        # how sure the answers are: a model that only flattened moves both losses towards ln 2
        "forget_confidence": confidence(member_p),
        "heldout_confidence": confidence(nonmember_p),
    }


def forgetting_against(
    model: Backbone,
    catalog: Catalog,
    forget: Sequence[Sample],
    heldout: Sequence[Sample],
    references: dict[str, Answers],
    *,
    batch_size: int = 128,
) -> dict[str, float]:
    """One model state's attack figures and its answer JSDs (forget set, held-out) to each
    named reference, in one scoring pass: what a benchmark records at every check of an
    unlearning run, to see which state a stop rule should have kept."""
    prompts = [catalog.prompt(s) for s in (*forget, *heldout)]
    logp = answer_distributions(model, prompts, batch_size=batch_size)
    answers = Answers(logp[: len(forget)], logp[len(forget) :])
    out = attack(answers.forget, answers.heldout, forget, heldout, model.format)
    answer_tokens = (model.format.yes_token, model.format.no_token)
    for name, reference in references.items():
        d = distances_to(answers, reference, answer_tokens)
        out[f"{name}_answer_jsd"] = d["answer_jsd"]
        out[f"{name}_heldout_answer_jsd"] = d["heldout_answer_jsd"]
    return out


def distances_to(
    answers: Answers, reference: Answers, answer_tokens: tuple[int, int]
) -> dict[str, float]:
    """JSD, L2, answer JSD and answer L2 to the reference (Retrain) on the forget set, and the
    JSDs on the held-out samples.

    Neither model trained on the held-out samples, so their distance there is what two
    trainings differ by anyway (the data, the order, the schedule): the forget set's distance
    above it is what training on the forget set added, and that is what unlearning can take
    away. A model that moved everywhere (more or less calibrated) moves on both."""
    out = distribution_distance(answers.forget, reference.forget, answer_tokens)
    held = distribution_distance(answers.heldout, reference.heldout, answer_tokens)
    return out | {"heldout_jsd": held["jsd"], "heldout_answer_jsd": held["answer_jsd"]}


def teacher_distances(
    teacher: TeacherAnswers,
    reference: Answers,
    answer_tokens: tuple[int, int],
    labels: Sequence[int],
    strengths: Sequence[float] = TEACHER_STRENGTHS,
) -> dict:
    """How far E2URec's forgetting teacher itself sits from the retrained model's answers on the
    forget set: the answer JSD (and LogLoss) of the teacher at the strength it used and at each
    of ``strengths``, beside the original's and the augmented model's.

    A student distils that teacher, so when the teacher is further from Retrain than the
    original is, no student of it can be closer than doing nothing. The strength the run
    calibrated is chosen by the forget loss alone; the curve shows what the distance would have
    been at others. ``labels``: the forget samples' labels, in the teacher's order (its first
    rows, when the task added unrated negatives after them)."""
    n = len(labels)
    ref = reference.forget.double()[:n, list(answer_tokens)].log_softmax(-1)

    def judged(logp: torch.Tensor) -> dict[str, float]:
        two_way = logp[:n].double().log_softmax(-1)
        return {
            "answer_jsd": float(jsd_per_sample(two_way, ref).mean()),
            "logloss": log_loss(labels, two_way[:, 0].exp().tolist()),  # column 0: yes
        }

    return {
        "alpha": teacher.alpha,
        **judged(teacher.forced()),
        "original": judged(teacher.original),
        "augmented": judged(teacher.augmented),
        "curve": [{"alpha": a, **judged(teacher.forced(a))} for a in strengths],
    }
