"""How close to Retrain can E2URec's forgetting teacher get, and in which form? No student.

The paper table judges the teacher a run used (``teacher_distances``): on SmolLM2 the best
strength tried left it nearly as far from Retrain's answers as doing nothing. This loads a
table run's kept Original and Retrain (``bench.paper_table --keep-models``), builds the
augmented model and the teachers' tables exactly as E2URec does (same settings, same seed), and
compares two forms of ``orig - alpha * relu(aug - orig)`` over the two-way answers, at every
strength:

* ``log-prob`` (E2URec's): the difference of log-probabilities. The token a memorised sample's
  label names is already near log-probability 0, so however far the augmented model fitted it,
  the difference is small: the push saturates on exactly the samples memorised hardest.
* ``margin``: the same formula on the two answer logits centred (each minus their mean, which
  like log-softmax ignores a shared shift): the difference is half the change in log-odds,
  which does not saturate.

It also reports, per forget sample, whether the push lands where memorising is: the
correlation between the push on the label (how much the teacher lowers log-odds of the label)
and the Original's excess confidence in the label over Retrain's.

    python -m bench.teacher_forms --keep-models /tmp/keep --out bench/results/<folder> \\
        <the table run's data and training options, and its --e2urec-setting options>
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from bench.common import command_line
from bench.paper_table import check_kept_models, kept_model, parse_e2urec_settings, prepare
from e2urec.evaluate import Answers, teacher_distances
from e2urec.model_store import load_model
from e2urec.scoring import answer_distributions
from e2urec.unlearn import E2URecConfig, StopRule, fitted_like
from e2urec.unlearn.augmented import train_augmented
from e2urec.unlearn.base import TeacherAnswers
from e2urec.unlearn.e2urec import answer_only
from e2urec.unlearn.stopping import Monitor
from e2urec.unlearn.teachers import answer_logits_all

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

FORMS = ("log-prob", "margin")
# The strength at which each form's base-rate shift is read: the paper's, and where the margin
# teacher came closest to Retrain (bench/results/ml1m-memorising-smollm2-bf16-teacher)
SHIFT_ALPHA = 2.0


@app.command()
def main(
    keep_models: Annotated[Path, typer.Option(help="the table run's --keep-models folder")],
    out: Annotated[Path, typer.Option(help="results folder")],
    path: Annotated[Path, typer.Option(help="dataset folder")],
    ratings_file: str | None = None,
    backbone: str = "smollm2-135m",
    samples: int = 1200,
    forget_fraction: float = 0.1,
    heldout_fraction: float = 0.1,
    repeat: int = 4,
    seed: int = 0,
    eval_samples: int = 120,
    check_samples: int = 40,
    unlearn_epochs: int = 4,
    max_auc_drop: float = 0.1,
    e2urec_setting: Annotated[list[str] | None, typer.Option(help="NAME=VALUE")] = None,
) -> None:
    args = {
        "regime": "memorising",
        "format": "auto",
        "path": path,
        "ratings_file": ratings_file,
        "samples": samples,
        "forget_fraction": forget_fraction,
        "heldout_fraction": heldout_fraction,
        "repeat": repeat,
        "backbone": backbone,
        "epochs": None,
        "lr": None,
        "valid_samples": 1000,
        "eval_samples": eval_samples,
    }
    check_kept_models(keep_models, [seed], args)  # made under these options, or refused
    models = {}
    for name in ("original", "retrain"):
        where = kept_model(keep_models, seed, name)
        if where is None:
            raise typer.BadParameter(f"no kept {name} for seed {seed} in {keep_models}")
        models[name], _ = load_model(where)
    world = prepare(args, seed)
    task, fmt = world.task, models["original"].format
    labels = [s.label for s in task.forget]
    prompts = [world.catalog.prompt(s) for s in task.forget]
    retrain = answer_distributions(models["retrain"], prompts)

    stop = StopRule(
        max_epochs=unlearn_epochs, eval_samples=check_samples, max_valid_auc_drop=max_auc_drop
    )
    given = {"bf16": world.train_cfg.bf16, **fitted_like(world.train_cfg)}
    given |= parse_e2urec_settings(e2urec_setting or [])
    cfg = E2URecConfig.within(stop, seed=seed, **given)
    torch.manual_seed(cfg.seed)  # as e2urec_unlearn: the same augmented model
    started = time.perf_counter()
    original = models["original"]
    monitor = Monitor.for_task(task, cfg.stop, cfg.seed, cfg.eval_batch_size)
    reference = monitor.check(original)
    aug = train_augmented(original, task, cfg, True, monitor=monitor, reference=reference)
    cols = [fmt.yes_token, fmt.no_token]

    def two_way(model) -> torch.Tensor:
        logits = answer_logits_all(model, prompts, batch_size=cfg.eval_batch_size)
        narrowed = answer_only(logits, fmt) if cfg.distill == "answer" else logits
        return narrowed.log_softmax(-1)[:, cols].double()

    orig, augm = two_way(original), two_way(aug.backbone)
    seconds = time.perf_counter() - started
    # Each form judged as the table judges a run's teacher (alpha 0 stands for none used)
    teachers = {form: TeacherAnswers(orig, augm, 0.0, form) for form in FORMS}
    judged = {
        form: teacher_distances(t, Answers(retrain, retrain[:0]), (cols[0], cols[1]), labels)
        for form, t in teachers.items()
    }
    curves = {form: j["curve"] for form, j in judged.items()}

    # Where the push lands: the label's log-odds, Original minus the teacher at alpha = 1 (the
    # push per unit strength), against the Original's excess label log-odds over Retrain's.
    sign = np.where(np.array(labels) == 1, 1.0, -1.0)
    retrain_two = retrain.double()[:, cols]

    def yes_log_odds(logp: torch.Tensor) -> np.ndarray:
        two = logp.log_softmax(-1).numpy()
        return two[:, 0] - two[:, 1]

    def label_log_odds(logp: torch.Tensor) -> np.ndarray:
        return sign * yes_log_odds(logp)

    excess = label_log_odds(orig) - label_log_odds(retrain_two)
    push = {f: label_log_odds(orig) - label_log_odds(t.forced(1.0)) for f, t in teachers.items()}
    placement = {
        form: {
            "corr_push_vs_excess": float(np.corrcoef(p, excess)[0, 1]),
            "mean_push": float(p.mean()),
        }
        for form, p in push.items()
    }

    # What each asks of the base rate: the change in the yes log-odds from the Original's, its
    # mean over the forget set (a shift a student can learn for every user at once) and how
    # well it follows, sample by sample, the change Retrain shows.
    wanted = yes_log_odds(retrain_two) - yes_log_odds(orig)
    asked = {
        f: yes_log_odds(t.forced(SHIFT_ALPHA)) - yes_log_odds(orig) for f, t in teachers.items()
    }
    shifts = {
        "retrain": {"mean_yes_shift": float(wanted.mean()), "corr_with_retrain": 1.0},
        **{
            f: {
                "mean_yes_shift": float(a.mean()),
                "corr_with_retrain": float(np.corrcoef(a, wanted)[0, 1]),
            }
            for f, a in asked.items()
        },
    }
    confidence = label_log_odds(orig)
    top = confidence >= np.quantile(confidence, 0.75)
    record = {
        "command": command_line(),
        "forget_samples": len(labels),
        "alpha_calibrated_range": [cfg.forget_strength, cfg.forget_strength_max],
        "seconds_augment_and_tables": seconds,
        "original": judged["log-prob"]["original"],
        "augmented": judged["log-prob"]["augmented"],
        "curves": curves,
        "placement": placement,
        "excess_label_log_odds_mean": float(excess.mean()),
        "log_prob_push_most_confident_quarter": float(push["log-prob"][top].mean()),
        "log_prob_push_rest": float(push["log-prob"][~top].mean()),
        "excess_most_confident_quarter": float(excess[top].mean()),
        "excess_rest": float(excess[~top].mean()),
        "yes_shift_alpha": SHIFT_ALPHA,
        "yes_shifts": shifts,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "teacher_forms.json").write_text(json.dumps(record, indent=2))
    lines = [
        f"# Forgetting teacher forms against Retrain ({len(labels)} forget samples, x100)",
        "",
        f"Original: answer JSD {100 * record['original']['answer_jsd']:.2f}, forget LL "
        f"{100 * record['original']['logloss']:.1f}; augmented: "
        f"{100 * record['augmented']['answer_jsd']:.2f}, "
        f"{100 * record['augmented']['logloss']:.1f}.",
        "",
        "| alpha | log-prob JSD | log-prob forget LL | margin JSD | margin forget LL |",
        "|---|---|---|---|---|",
    ]
    for a, b in zip(curves["log-prob"], curves["margin"], strict=True):
        lines.append(
            f"| {a['alpha']:g} | {100 * a['answer_jsd']:.2f} | {100 * a['logloss']:.1f} | "
            f"{100 * b['answer_jsd']:.2f} | {100 * b['logloss']:.1f} |"
        )
    lines += [
        "",
        "Where the push lands (label log-odds lowered per unit strength, against the "
        "Original's excess label log-odds over Retrain's):",
        "",
        *(
            f"- {form}: mean push {p['mean_push']:.3f}, correlation with the excess "
            f"{p['corr_push_vs_excess']:+.3f}"
            for form, p in placement.items()
        ),
        f"- log-prob push on the quarter the Original is surest of: "
        f"{record['log_prob_push_most_confident_quarter']:.3f} (their excess "
        f"{record['excess_most_confident_quarter']:.2f}); on the rest: "
        f"{record['log_prob_push_rest']:.3f} (excess {record['excess_rest']:.2f})",
        "",
        f"What each asks of the yes log-odds on the forget set (alpha {SHIFT_ALPHA:g}, change "
        "from the Original's: the mean is a base-rate shift, the correlation how well it "
        "follows Retrain's change sample by sample; Retrain's labelled 'retrain'):",
        "",
        *(
            f"- {name}: mean shift {v['mean_yes_shift']:+.3f}, correlation with Retrain's "
            f"{v['corr_with_retrain']:+.3f}"
            for name, v in shifts.items()
        ),
        "",
        f"Command: `{record['command']}`",
    ]
    (out / "teacher_forms.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    app()
