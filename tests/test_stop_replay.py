"""bench.stop_replay: which check each stop level keeps, on runs the project committed."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bench.stop_replay import app, checks, kept, replay

RESULTS = Path(__file__).parent.parent / "bench/results"
RUNS = RESULTS / "ml1m-memorising-smollm2-bf16-twin"
SEEDS = RESULTS / "ml1m-memorising-smollm2-bf16-heldout-seeds"


def _history(folder: str, runs: Path = RUNS) -> list[dict]:
    return json.loads((runs / folder / "results.json").read_text())["results"]["0"]["e2urec"][
        "history"
    ]


def _recorded(history: list[dict]) -> dict:
    """The check the run itself kept."""
    return next(p["kept"] for p in history if "kept" in p)


def test_the_replay_keeps_what_the_run_kept_and_the_original_level_an_earlier_check():
    for folder in ("heldout-default", "heldout-anchor"):  # both ran under the level "own"
        history = _history(folder)
        assert checks(history)[kept(history, "own")] == _recorded(history)
    # the default schedule overshot (forget 0.98, held-out 1.00); against the original's fixed
    # held-out level (0.76) the first forget-only check (0.72, 0.75) is nearest
    default = _history("heldout-default")
    assert checks(default)[kept(default, "original")]["epoch"] == 1
    table = replay(default)
    assert "| epoch 1 batch 5 (forget only) | 71.7 | 74.7 | 79.0 | original |" in table
    assert table.splitlines()[-1].endswith("| own |")


def test_on_the_run_under_the_original_level_its_kept_check_is_nearer_both_retrains():
    # seed 0's default schedule rerun with --stop-level original --check-distances: the run kept
    # the check the replay names, nearer both Retrains than doing nothing; "own" keeps one further
    history = _history("seed0-default-original", SEEDS)
    made, recorded = checks(history), _recorded(history)
    assert made[kept(history, "original")] == recorded

    def mean_jsd(point: dict) -> float:
        return (point["bench_retrain_answer_jsd"] + point["bench_twin_answer_jsd"]) / 2

    untouched = mean_jsd(made[0])
    assert mean_jsd(recorded) < untouched / 4  # 0.60 against 3.77 (x100)
    assert mean_jsd(made[kept(history, "own")]) > untouched  # the overshoot: 4.09


def test_the_replay_names_the_rows_it_has_when_asked_for_another(tmp_path: Path):
    result = CliRunner().invoke(
        app, [str(RUNS / "heldout-default/results.json"), "--row", "neggrad"]
    )
    assert result.exit_code == 2 and "e2urec" in _said(result.output)
    missing = CliRunner().invoke(app, [str(tmp_path / "none.json")])
    assert missing.exit_code == 2 and "is not a file" in _said(missing.output)


def _said(output: str) -> str:
    return " ".join(output.replace("│", " ").split())  # rich boxes and wraps it
