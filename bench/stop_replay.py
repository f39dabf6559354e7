"""Which check each stop level would keep, replayed on a table run's recorded checks.

An unlearning row's history holds every check the stop rule made (forget and held-out loss on
its subsamples); with ``bench.paper_table --check-distances`` each also holds what the rule
never sees: the attack's AUC and the answer JSD to both Retrains. This prints those checks and
marks the one ``keep_best`` keeps under each ``StopRule.level``, so a level can be judged by
how close to the Retrains its choice sat. The replay judges the checks the run made: a run
under the other level may stop at another point, so only checks made before either rule fired
compare exactly (the README beside a result says which).

    python -m bench.stop_replay bench/results/<run>/results.json [--row e2urec]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from e2urec.unlearn.stopping import Check, StopRule

LEVELS = ("own", "original")
SHOWN = {  # history key -> column
    "forget_loss": "forget",
    "heldout_loss": "held-out",
    "mia_auc": "check MIA",
    "heldout_confidence": "check held-out conf.",
    "bench_mia_auc": "attack MIA",
    "bench_forget_logloss": "attack forget LL",
    "bench_heldout_logloss": "attack held-out LL",
    "bench_forget_confidence": "forget conf.",
    "bench_heldout_confidence": "held-out conf.",
    "bench_retrain_answer_jsd": "JSD Retrain",
    "bench_twin_answer_jsd": "JSD 2nd Retrain",
}

app = typer.Typer(add_completion=False)


def _check(point: dict) -> Check:
    sure = point.get("heldout_confidence", float("nan"))  # absent before stop 47's runs
    loss = (point["forget_loss"], point["heldout_loss"], point["valid_auc"])
    return Check(*loss, heldout_confidence=sure)


def checks(history: list[dict]) -> list[dict]:
    """The checks in a row's history, the untouched model first (the rest are notes such as
    the kept check)."""
    return [p for p in history if "epoch" in p]


def kept(history: list[dict], level: str, min_confidence: float = 0.0) -> int:
    """The index in ``history`` (its checks, the untouched model first) that keep_best keeps
    under ``level`` (and the flattening guard, where the checks recorded their confidence):
    the first of the nearest, as the loop keeps it."""
    made = checks(history)
    rule = StopRule(level=level, min_confidence=min_confidence)
    reference = _check(made[0])
    distances = [rule.distance(_check(p), reference) for p in made]
    return distances.index(min(distances))


def replay(history: list[dict], min_confidence: float = 0.0) -> str:
    """A markdown table of the checks, each level's kept one marked (and, with
    ``min_confidence``, what each keeps under the flattening guard)."""
    made = checks(history)
    shown = [k for k in SHOWN if any(k in p and p[k] == p[k] for p in made)]  # NaN: not shown
    keeps = {level: kept(history, level) for level in LEVELS}
    if min_confidence:
        for level in LEVELS:
            keeps[f"{level} + guard {min_confidence:g}"] = kept(history, level, min_confidence)
    lines = [
        "| check | " + " | ".join(SHOWN[k] for k in shown) + " | kept by |",
        "|---" * (len(shown) + 2) + "|",
    ]
    for i, p in enumerate(made):
        where = "untouched" if p["epoch"] == 0 else f"epoch {p['epoch']} batch {p['batch']}"
        where += "" if p.get("mixed", True) else " (forget only)"
        by = ", ".join(level for level, at in keeps.items() if at == i)
        cells = [f"{100 * p[k]:.{2 if 'jsd' in k else 1}f}" if k in p else "" for k in shown]
        lines.append(f"| {where} | " + " | ".join(cells) + f" | {by} |")
    return "\n".join(lines)


@app.command()
def main(
    results: Annotated[Path, typer.Argument(help="a bench.paper_table results.json")],
    row: Annotated[str, typer.Option(help="the unlearning row whose checks to replay")] = "e2urec",
    min_confidence: Annotated[
        float,
        typer.Option(help="also mark what each level keeps with the flattening guard at this"),
    ] = 0.0,
):
    if not results.is_file():
        raise typer.BadParameter(f"{results} is not a file", param_hint="RESULTS")
    runs = json.loads(results.read_text())["results"]
    for seed, rows in runs.items():
        if row not in rows or "history" not in rows[row]:
            raise typer.BadParameter(
                f"seed {seed} has no {row!r} row with checks; rows: {', '.join(rows)}",
                param_hint="--row",
            )
        recorded = next((p["kept"] for p in rows[row]["history"] if "kept" in p), None)
        print(f"\n## seed {seed}, {row} (x100; the run kept: {recorded and recorded['epoch']})\n")
        print(replay(rows[row]["history"], min_confidence))


if __name__ == "__main__":
    app()
