"""The command line's error paths: one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from e2urec.cli import app
from e2urec.model_store import read_manifest
from tests.conftest import write

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_prepare_missing_folder(tmp_path: Path):
    result = run("prepare", "--out", str(tmp_path / "o"), "--path", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "does not exist" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_prepare_malformed_ratings_names_the_line(ml1m_dir: Path, tmp_path: Path):
    write(ml1m_dir / "ratings.dat", "1::1::5::978300760\n1|2|3|978302109\n")
    result = run("prepare", "--out", str(tmp_path / "o"), "--path", str(ml1m_dir))
    assert result.exit_code == 2
    assert "ratings.dat:2: expected 4 fields" in result.output.replace("\n", "")
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_prepare_writes_splits_and_refuses_to_overwrite(tmp_path: Path):
    out = tmp_path / "o"
    small = ["--synthetic-users", "20", "--synthetic-items", "30"]
    assert run("prepare", "--out", str(out), *small).exit_code == 0
    assert {p.name for p in out.iterdir()} == {
        "meta.json",
        "catalog.json",
        "train.jsonl",
        "valid.jsonl",
        "test.jsonl",
    }
    again = run("prepare", "--out", str(out), *small)
    assert again.exit_code == 2 and "--force" in again.output
    assert run("prepare", "--out", str(out), *small, "--force").exit_code == 0


def test_too_few_samples_is_explained(ml1m_dir: Path, tmp_path: Path):
    result = run("prepare", "--out", str(tmp_path / "o"), "--path", str(ml1m_dir))
    assert result.exit_code == 2 and "need at least 5 samples" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--forget-fraction", "1.5"], "forget_fraction must be in"),
        (["--format", "parquet"], "unknown format"),
        (["--history", "0"], "history_len must be at least 1"),
        (["--split", "0.5,0.5"], "--split takes three fractions"),
        (["--split", "0.5,0.6,0.1"], "split must be three positive fractions"),
    ],
)
def test_prepare_bad_options(tmp_path: Path, args: list[str], message: str):
    result = run("prepare", "--out", str(tmp_path / "o"), *args)
    assert result.exit_code == 2 and message in result.output


def test_prepare_split_sets_each_period_and_train_caps_the_scored_samples(tmp_path: Path):
    # A long test period for the ranking bench (hundreds of users) without a longer training
    # run, or an hour of scoring every test sample for the final metrics.
    prep, model = tmp_path / "prep", tmp_path / "m"
    small = ["--synthetic-users", "20", "--synthetic-items", "30", "--samples", "100"]
    assert run("prepare", "--out", str(prep), *small, "--split", "0.2,0.1,0.7").exit_code == 0
    meta = json.loads((prep / "meta.json").read_text())
    assert (meta["counts"]["train"], meta["counts"]["valid"], meta["counts"]["test"]) == (
        20,
        10,
        70,
    )
    assert meta["sample_config"]["split"] == [0.2, 0.1, 0.7]
    done = run("train", "--data", str(prep), "--out", str(model), "--epochs", "1")
    assert done.exit_code == 0, done.output
    everything = read_manifest(model)["scored_samples"]
    assert everything == {"valid": 10, "test": 70}
    capped = run(
        "train",
        "--data",
        str(prep),
        "--out",
        str(model),
        "--epochs",
        "1",
        "--score-samples",
        "8",
        "--force",
    )
    assert capped.exit_code == 0, capped.output
    assert "valid 8 of 10, test 8 of 70" in capped.output
    assert read_manifest(model)["scored_samples"] == {
        "valid": 8,
        "test": 8,
    }
    refused = run("train", "--data", str(prep), "--out", str(model), "--score-samples", "-1")
    assert refused.exit_code == 2 and "--score-samples must be 0" in refused.output


def test_train_and_score_explain_bad_inputs(tmp_path: Path):
    result = run("train", "--data", str(tmp_path), "--out", str(tmp_path / "m"))
    assert result.exit_code == 2 and "not a prepared dataset" in result.output
    prep = tmp_path / "prep"
    assert (
        run(
            "prepare", "--out", str(prep), "--synthetic-users", "20", "--synthetic-items", "30"
        ).exit_code
        == 0
    )
    result = run("train", "--data", str(prep), "--out", str(tmp_path / "m"), "--backbone", "gpt-9")
    assert result.exit_code == 2 and "unknown backbone" in result.output
    result = run(
        "train", "--data", str(prep), "--out", str(tmp_path / "m"), "--early-stop-on", "f1"
    )
    assert result.exit_code == 2 and "early_stop_on" in result.output
    result = run("score", "--model", str(tmp_path), "--data", str(prep), "--split", "holdout")
    assert result.exit_code == 2 and "unknown split" in result.output
    result = run("score", "--model", str(tmp_path), "--data", str(prep))
    assert result.exit_code == 2 and "was not written by `e2urec train`" in result.output


def test_train_defaults_follow_the_backbone():
    from e2urec.cli.train import cli_train_config, describe_config

    scratch = cli_train_config("tiny")  # the paper's schedule, every weight
    assert (scratch.epochs, scratch.lr, scratch.lora, scratch.objective) == (
        5,
        2e-3,
        False,
        "target",
    )
    # a bare `e2urec train --backbone smollm2-135m` must not fully fine-tune at 2e-3 for 5 epochs
    llm = cli_train_config("smollm2-135m")
    assert (llm.lora, llm.lora_targets, llm.objective, llm.epochs, llm.lr) == (
        True,
        "all-linear",
        "answer",
        1,
        1e-3,
    )
    assert llm.max_valid_samples == 200 and llm.lora_dropout == 0.0
    given = cli_train_config("smollm2-135m", lora=False, lr=5e-5, valid_samples=0, epochs=None)
    assert (given.lora, given.lr, given.max_valid_samples, given.epochs) == (False, 5e-5, None, 1)
    ranking = cli_train_config("smollm2-135m", negatives=0.5)
    assert ranking.negatives == 0.5 and llm.negatives == 0.0
    assert "0.5 unrated item(s) per sample as negatives (drawn by popularity)" in describe_config(
        "smollm2-135m", ranking
    )
    hard = cli_train_config("smollm2-135m", negatives=1.0, negatives_from="co-occurrence")
    assert "(drawn by co-occurrence)" in describe_config("smollm2-135m", hard)


def test_unlearn_lists_the_registry_and_refuses_an_unknown_method_before_loading(tmp_path: Path):
    from e2urec.unlearn import METHODS

    assert run("unlearn", "--help").exit_code == 0
    listed = run("unlearn", "--model", "x", "--data", "x", "--out", "x", "--list-methods")
    assert listed.exit_code == 0
    for name in METHODS:
        assert name in listed.output
    # the model and data paths do not exist: the method name is checked first
    missing = str(tmp_path / "nope")
    bad = run(
        "unlearn", "--model", missing, "--data", missing, "--out", missing, "--method", "original"
    )
    assert bad.exit_code == 2
    assert "unknown unlearning method 'original'" in bad.output and "neggrad" in bad.output
    users = run(
        "unlearn", "--model", missing, "--data", missing, "--out", missing, "--users", "1,a"
    )
    assert users.exit_code == 2 and "comma-separated user ids" in users.output
    level = run(
        "unlearn", "--model", missing, "--data", missing, "--out", missing, "--stop-level", "x"
    )
    assert level.exit_code == 2 and "'original'" in level.output


def test_the_benchmark_takes_its_methods_from_the_same_registry():
    from bench.paper_table import DIAGNOSTICS, ORDER
    from bench.paper_table import app as table
    from e2urec.unlearn import METHODS

    # every method of the registry, and the table's diagnostic rows, which no user can run
    assert ["original", *METHODS, *DIAGNOSTICS] == ORDER and not set(DIAGNOSTICS) & set(METHODS)
    result = CliRunner().invoke(table, ["--out", "/nonexistent/x", "--methods", "original"])
    assert result.exit_code == 2 and "e2urec" in result.output
    # E2URec settings are checked before anything trains, by name and by value
    wrong = [("lr", "NAME=VALUE"), ("lora_rank=8", "lora_rank"), ("lr=-1", "lr")]
    for bad, says in [*wrong, ("teacher_form=logit", "margin")]:
        result = CliRunner().invoke(table, ["--out", "/nonexistent/x", "--e2urec-setting", bad])
        assert result.exit_code == 2 and says in result.output, result.output
    result = CliRunner().invoke(table, ["--out", "/nonexistent/x", "--stop-level", "retrain"])
    assert result.exit_code == 2 and "'own'" in result.output, result.output
    result = CliRunner().invoke(table, ["--out", "/nonexistent/x", "--min-confidence", "2"])
    said = " ".join(result.output.replace("│", " ").split())  # rich boxes and wraps it
    assert result.exit_code == 2 and "e.g. 0.5" in said, result.output


def test_a_stopped_benchmark_run_is_tabulated_from_its_partial_rows(tmp_path: Path):
    """A slow backbone's run may be stopped midway; --finish writes the rows it measured."""
    from bench.paper_table import app as table

    committed = Path(__file__).parent.parent / "bench/results/ml1m-memorising-smollm2-cpu"
    rows = json.loads((committed / "results.json").read_text())["results"]["0"]
    finish = ["--out", str(tmp_path), "--seeds", "0", "--finish"]

    def said(result) -> str:  # rich wraps an error in a box: read it as one line
        return " ".join(result.output.replace("│", " ").split())

    empty = CliRunner().invoke(table, finish)
    assert empty.exit_code == 2 and "run without --finish first" in said(empty)
    early = {k: rows[k] for k in ["original"]}  # stopped before the reference existed
    partial = tmp_path / "seed-0.partial.json"
    partial.write_text(json.dumps({"seed": 0, "rows": early}))
    assert "before Retrain finished" in said(CliRunner().invoke(table, finish))
    kept = {k: rows[k] for k in ["original", "retrain", "e2urec"]}  # stopped during NegGrad
    partial.write_text(json.dumps({"seed": 0, "rows": kept}))
    result = CliRunner().invoke(table, finish)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["stopped_after"] == [{"seed": 0, "rows": ["original", "retrain", "e2urec"]}]
    written = (tmp_path / "table.md").read_text()
    assert "| e2urec |" in written and "| original |" in written and "neggrad" not in written


def test_a_kept_original_and_retrain_are_reused_and_only_under_their_own_settings(
    tmp_path: Path,
):
    """On SmolLM2 the Original and Retrain are 35-45 of a seed's 60 minutes: --keep-models lets
    the next E2URec variant skip them, and must give the very rows a fresh training gives."""
    from bench.paper_table import TWIN
    from bench.paper_table import app as table

    models = tmp_path / "models"
    run = ["--regime", "memorising", "--samples", "400", "--epochs", "1", "--seeds", "0"]
    run += ["--eval-samples", "60", "--unlearn-epochs", "2", "--no-progress"]
    run += ["--keep-models", str(models)]
    first = CliRunner().invoke(table, [*run, "--methods", "neggrad", "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    assert (models / "seed-0" / "original").is_dir() and (models / "seed-0" / "retrain").is_dir()
    # another unlearning method, budget and stop level: the same Original and Retrain serve it
    again = [*run, "--methods", "negkl", "--check-samples", "50", "--out", str(tmp_path / "b")]
    again += ["--stop-level", "original", "--check-distances"]
    second = CliRunner().invoke(table, [*again, "--methods", TWIN, "--methods", "e2urec"])
    assert second.exit_code == 0, second.output
    assert "original: kept at" in second.output and "retrain: kept at" in second.output
    saved = [json.loads((tmp_path / d / "results.json").read_text()) for d in "ab"]
    rows = [s["results"]["0"] for s in saved]
    assert "stop_level" not in saved[0]["args"] and saved[1]["args"]["stop_level"] == "original"
    for name in ("original", "retrain"):  # the same, bar their distance to the second Retrain
        assert rows[0][name] == {k: v for k, v in rows[1][name].items() if k != "to_twin"}
    assert "negkl" in rows[1] and "neggrad" not in rows[1]
    # Retrain again from another training seed: exact, yet not the same model as Retrain
    twin = rows[1][TWIN]
    assert twin["trainable_parameters"] == rows[1]["retrain"]["trainable_parameters"]
    assert twin["answer_jsd"] > 0 and rows[1]["original"]["to_twin"]["answer_jsd"] > 0
    # every row is judged against both Retrains; Retrain's distance to the second is the twin's
    assert rows[1]["negkl"]["to_twin"]["answer_jsd"] > 0
    assert rows[1]["e2urec"]["teacher"]["to_twin"]["answer_jsd"] > 0  # its teacher's, too
    assert rows[1]["retrain"]["to_twin"]["answer_jsd"] == pytest.approx(twin["answer_jsd"])
    # --check-distances: every E2URec check also saw the attack and both Retrains; the first
    # (the untouched model) saw what the Original's row says
    history = rows[1]["e2urec"]["history"]
    assert all("bench_twin_answer_jsd" in p for p in history if "epoch" in p)
    assert "bench_retrain_answer_jsd" in history[-1]["kept"]
    for key in ("answer_jsd", "mia_auc", "forget_logloss", "heldout_answer_jsd"):
        assert history[0][f"bench_retrain_{key}" if "jsd" in key else f"bench_{key}"] == (
            pytest.approx(rows[1]["original"][key], rel=1e-3, abs=1e-6)
        )
    table_b = (tmp_path / "b" / "table.md").read_text()
    assert "Retrain with another training seed" in table_b and "| negkl | 0 |" in table_b
    assert (models / "seed-0" / "retrain-twin").is_dir()  # kept for the next run
    # the two-way answers' distance to Retrain beside the paper's full-vocabulary one
    assert {"answer_jsd", "answer_mass", "heldout_answer_jsd"} <= rows[0]["neggrad"].keys()
    assert rows[0]["original"]["answer_jsd"] > 0 and rows[0]["retrain"]["answer_jsd"] == 0
    assert "| answer JSD |" in (tmp_path / "a" / "table.md").read_text()
    # the sizes every forgetting figure reads, and the table's word on the smaller half
    sizes = rows[0]["original"]["samples"]
    assert sizes["forget"] > 0 and sizes["heldout"] > 0 and sizes["check"] > 0
    assert "Never-trained samples in the smaller half" in table_b
    # how sure each model is, so that a method that only flattened is seen as such
    for name in ("original", "retrain", "negkl", "e2urec"):
        assert 0 < rows[1][name]["heldout_confidence"] <= 1 and "test_confidence" in rows[1][name]
    assert "| e2urec |" in table_b.split("Confidence, mean")[1]
    assert "did not flatten everyone" in table_b
    assert all("bench_heldout_confidence" in p for p in history if "epoch" in p)
    # other data: refused before anything trains, and the kept models are left as they were
    other = [*run, "--samples", "300", "--methods", "neggrad", "--out", str(tmp_path / "c")]
    refused = CliRunner().invoke(table, other)
    said = " ".join(refused.output.replace("│", " ").split())  # rich boxes and wraps it
    assert refused.exit_code == 2 and "trained with other settings" in said
    assert not (tmp_path / "c").exists()


def test_the_table_judges_e2urecs_forgetting_teacher_beside_doing_nothing(tmp_path: Path):
    """A student distils its forgetting teacher: the table says how far the teacher itself sits
    from Retrain, at the strength it used and the best one tried, and plots the curve."""
    from bench.paper_table import write_plot, write_table

    committed = Path(__file__).parent.parent / "bench/results"
    folder = committed / "ml1m-memorising-smollm2-bf16-answer-jsd/warmup5-again"
    rows = json.loads((folder / "results.json").read_text())["results"]["0"]
    curve = [
        {"alpha": a, "answer_jsd": j, "logloss": ll}
        for a, j, ll in [(0.0, 0.052, 0.47), (2.0, 0.04, 0.55), (8.0, 0.03, 0.7), (32, 0.09, 1.2)]
    ]
    teacher = {"alpha": 32.0, "answer_jsd": 0.09, "logloss": 1.2, "curve": curve}
    teacher |= {"original": {"answer_jsd": 0.052}, "augmented": {"answer_jsd": 0.06}}
    rows["e2urec"]["teacher"] = teacher
    text = write_table({0: rows}, tmp_path, "python -m bench.paper_table ...")
    check = next(line for line in text.splitlines() if "forgetting teacher answer JSD" in line)
    # 9.0 against the Original's 5.1: a student of this teacher cannot get closer
    assert "| +3.9" in check and check.endswith("| NO |"), check
    assert "| e2urec | 0 | 5.20 | 6.00 | 9.00 (32.00) | 8 (3.00, 70.0) |" in text
    write_plot({0: rows}, tmp_path)
    assert (tmp_path / "teacher_strength.png").stat().st_size > 10_000


def test_the_table_reports_the_student_with_retrain_as_its_teacher(tmp_path: Path):
    """The oracle row separates the student from its teacher: given Retrain's own answers on the
    forget set, does the student end closer than doing nothing? Not a method: run on request."""
    from bench.paper_table import ORACLE, write_table

    committed = Path(__file__).parent.parent / "bench/results"
    folder = committed / "ml1m-memorising-smollm2-bf16-answer-jsd/warmup5-again"
    rows = json.loads((folder / "results.json").read_text())["results"]["0"]
    oracle = dict(rows.pop("e2urec"), answer_jsd=0.031)  # 3.1 against the Original's 5.0
    oracle["details"] = {"teacher_forget_loss": {"forced": 0.773}}
    text = write_table({0: rows | {ORACLE: oracle}}, tmp_path, "python -m bench.paper_table ...")
    check = next(line for line in text.splitlines() if "with Retrain as its teacher" in line)
    assert "| -1.966 |" in check and check.endswith("| yes |"), check
    assert f"| {ORACLE} |" in text and f"| {ORACLE}: its forgetting teacher | 77.3 |" in text
    assert "E2URec: MIA gap closed" not in text  # no plain E2URec row to judge


def test_the_table_says_when_the_held_out_halves_are_too_small_to_judge(tmp_path: Path):
    """Seed 2 of the memorising SmolLM2 table judged every student on 8 never-trained samples a
    half: the table must say so beside the Original's MIA, not leave it to a later stop."""
    from bench.paper_table import MIN_HALF, write_table

    committed = Path(__file__).parent.parent / "bench/results"
    folder = committed / "ml1m-memorising-smollm2-bf16-heldout-seeds/seed2-anchor-unrated-original"
    rows = json.loads((folder / "results.json").read_text())["results"]["2"]

    def verdict(heldout: int, check: int) -> str:
        rows["original"]["samples"] = {"forget": 149, "heldout": heldout, "check": check}
        text = write_table({2: rows}, tmp_path, "python -m bench.paper_table ...")
        return next(line for line in text.splitlines() if "Never-trained samples" in line)

    assert verdict(8, 8).endswith("| NO |")
    assert verdict(MIN_HALF + 5, MIN_HALF - 1).endswith("| NO |")  # the smaller half decides
    assert verdict(MIN_HALF, MIN_HALF + 3).endswith("| yes |")
