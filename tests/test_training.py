from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from e2urec.backbones import load_backbone
from e2urec.data import Catalog, SampleConfig, SyntheticConfig, generate_synthetic, make_splits
from e2urec.metrics import auc
from e2urec.model_store import load_model
from e2urec.scoring import predict_like
from e2urec.training import TrainConfig, train_llmrec


def e2urec(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command line, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "e2urec.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def small():
    ds = generate_synthetic(SyntheticConfig(users=120, items=120, ratings_per_user=30, seed=5))
    splits = make_splits(ds, SampleConfig(max_samples=None))
    catalog = Catalog.of(ds)
    corpus = catalog.texts() + [catalog.prompt(s).text for s in splits.train]
    return catalog, splits, corpus


@pytest.mark.slow
def test_cli_train_then_score_round_trip(tmp_path: Path):
    data, model = tmp_path / "data", tmp_path / "model"
    done = e2urec(
        "prepare",
        "--out",
        str(data),
        "--synthetic-users",
        "50",  # about 1,200 train samples: the round trip is the point (100 users: 300 s)
        "--synthetic-items",
        "60",
        "--samples",
        "0",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    meta = json.loads((data / "meta.json").read_text())
    done = e2urec("train", "--data", str(data), "--out", str(model), "--epochs", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((model / "e2urec.json").read_text())
    assert manifest["data"]["data_hash"] == meta["data_hash"]
    assert manifest["data"]["split_seed"] == 42
    assert manifest["train_config"]["epochs"] == 2 and manifest["train_config"]["lr"] == 2e-3
    assert manifest["training"]["steps"] > 0 and manifest["training"]["stopped"]
    assert set(manifest["metrics"]) == {"valid", "test"}
    assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()
    # Scoring the saved model reproduces the metrics recorded at training time.
    preds = tmp_path / "preds.csv"
    done = e2urec(
        "score",
        "--model",
        str(model),
        "--data",
        str(data),
        "--split",
        "test",
        "--output",
        str(preds),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert f"{manifest['metrics']['test']['auc']:.4f}" in done.stdout
    rows = preds.read_text().splitlines()
    assert (
        rows[0] == "user_id,item_id,rating,label,p_like" and len(rows) - 1 == meta["counts"]["test"]
    )
    # A second train into the same folder is refused before any work is done.
    done = e2urec("train", "--data", str(data), "--out", str(model), cwd=tmp_path)
    assert (
        done.returncode == 2 and "already exists" in done.stderr and "Traceback" not in done.stderr
    )
    # Unlearning the data's forget users from the command line: E2URec writes an adapter for
    # the saved model, an all-weight method a model folder; both report before and after.
    quick = ["--max-epochs", "2", "--check-samples", "200", "--eval-samples", "300"]
    for method, produced in (("e2urec", "unlearn.json"), ("neggrad", "e2urec.json")):
        forgot = tmp_path / f"forgot-{method}"
        args = ["--model", str(model), "--data", str(data), "--out", str(forgot), *quick]
        done = e2urec("unlearn", *args, "--method", method, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "forget LogLoss" in done.stdout and "MIA AUC" in done.stdout
        record = json.loads((forgot / produced).read_text())
        assert record["method"] == method and record["forget_samples"] == meta["counts"]["forget"]
        assert record["metrics"]["original"]["forget_logloss"] > 0
    from e2urec.adapter_files import read_adapter
    from e2urec.lora import with_adapter

    original, _ = load_model(model)
    served = with_adapter(original, read_adapter(tmp_path / "forgot-e2urec"))
    assert served.model is not original.model


@pytest.mark.slow
def test_training_learns_beyond_the_prior(small):
    catalog, splits, corpus = small
    backbone = load_backbone("tiny", corpus=corpus, device="cpu")
    prompts = [catalog.prompt(s) for s in splits.train]
    labels = [s.label for s in splits.train]
    before = auc(labels, predict_like(backbone, prompts))
    result = train_llmrec(
        backbone,
        catalog,
        splits.train,
        splits.valid,
        # two epochs reach train AUC 0.67 from 0.47 (four: 0.68, at twice the 130 s)
        TrainConfig(epochs=2, lr=3e-3, evals_per_epoch=1, patience=4),
        progress=False,
    )
    after = auc(labels, predict_like(backbone, prompts))
    assert result.steps > 0 and len(result.history) >= 1
    assert after > 0.62 and after > before + 0.15, (before, after, result.history)
    assert not backbone.model.training  # handed back ready for inference


def test_negatives_add_unrated_items_to_the_training_steps(small):
    catalog, splits, corpus = small
    train = splits.train[:320]  # the step count is the point, not the model (84 s on all)
    steps = {}
    for negatives in (0.0, 1.0):
        backbone = load_backbone("tiny", corpus=corpus, device="cpu")
        cfg = TrainConfig(epochs=1, batch_size=64, negatives=negatives)
        steps[negatives] = train_llmrec(backbone, catalog, train, [], cfg, progress=False)
    assert steps[0.0].steps == 5 and steps[1.0].steps == 10
    with pytest.raises(ValueError, match="negatives"):
        TrainConfig(negatives=-0.5)
    with pytest.raises(ValueError, match="negatives_from must be one of popularity, co-occurrence"):
        TrainConfig(negatives=1.0, negatives_from="random")


def test_early_stopping_records_why(small):
    catalog, splits, corpus = small
    backbone = load_backbone("tiny", corpus=corpus, device="cpu")
    cfg = TrainConfig(epochs=5, lr=1e-9, evals_per_epoch=2, patience=1, max_valid_samples=64)
    result = train_llmrec(backbone, catalog, splits.train[:256], splits.valid, cfg, progress=False)
    assert result.stopped.startswith("early stop: valid loss did not improve")
    assert len(result.history) == 2  # stopped at the first evaluation without improvement
    # the first evaluation's weights are the ones kept, and the result says so
    assert result.best_step == result.history[0]["step"] < result.steps


def test_until_ends_training_after_the_epoch_it_names(small):
    catalog, splits, corpus = small
    backbone = load_backbone("tiny", corpus=corpus, device="cpu")
    seen: list[bool] = []

    def until(model) -> str | None:
        seen.append(model.model.training)
        return "fitted enough" if len(seen) == 2 else None

    cfg = TrainConfig(epochs=5, batch_size=64)
    steps_per_epoch = math.ceil(128 / cfg.batch_size)
    train = splits.train[:128]
    result = train_llmrec(backbone, catalog, train, [], cfg, progress=False, until=until)
    assert result.stopped == "fitted enough"
    assert result.steps == 2 * steps_per_epoch  # two epochs of five, then it stopped
    assert seen == [False, False]  # judged in eval mode (no dropout)


def test_lora_then_merge_leaves_a_plain_model(small):
    catalog, splits, corpus = small
    backbone = load_backbone("tiny", corpus=corpus, device="cpu")
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    result = train_llmrec(
        backbone,
        catalog,
        splits.train[:128],
        splits.valid[:64],
        TrainConfig(epochs=1, lora=True, lr=1e-2),
        progress=False,
    )
    assert result.trainable_parameters < backbone.parameter_count() / 5
    assert type(backbone.model).__name__ == "LlamaForCausalLM"
    after = backbone.model.state_dict()
    assert set(after) == set(before)  # merged: no lora_ tensors left
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(".q_proj." in k or ".v_proj." in k for k in changed)


def test_saved_model_loads_with_manifest(small, tmp_path: Path):
    from e2urec.model_store import save_model

    catalog, splits, corpus = small
    backbone = load_backbone("tiny", corpus=corpus, device="cpu")
    save_model(backbone, tmp_path / "m", {"kind": "llmrec-original"})
    loaded, manifest = load_model(tmp_path / "m", device="cpu")
    assert manifest["kind"] == "llmrec-original" and manifest["answer_tokens"]["yes"][1].endswith(
        "Yes."
    )
    prompts = [catalog.prompt(s) for s in splits.test[:8]]
    np.testing.assert_allclose(
        predict_like(loaded, prompts), predict_like(backbone, prompts), atol=1e-6
    )
    with pytest.raises(FileExistsError, match="--force"):
        save_model(backbone, tmp_path / "m", {})


def test_pretrained_backbones_get_a_merged_lora_recipe_and_presets_all_weights():
    from e2urec.training import recipe_for

    tiny = recipe_for("tiny").config(seed=3)
    assert not tiny.lora and not tiny.bf16 and tiny.lr == 2e-3 and tiny.seed == 3
    assert recipe_for("tiny").samples == 0  # all samples: the preset is cheap
    real = recipe_for("smollm2-135m")
    cfg = real.config(epochs=None, lr=5e-4)  # None keeps the recipe's value
    assert cfg.lora and cfg.bf16 and cfg.epochs == 1 and cfg.lr == 5e-4
    assert cfg.objective == "answer" and tiny.objective == "target"
    assert cfg.lora_targets == "all-linear" and real.config().lr == 1e-3  # what the bench ran
    assert cfg.max_valid_samples == 200 and real.samples == 2000
    assert recipe_for("/models/my-llama").train == real.train  # any folder or GGUF: pretrained


def test_the_answer_objective_trains_p_yes_and_nothing_else(small):
    """`objective="answer"` is the cross-entropy of P(yes) = softmax(yes, no): it equals the
    scored LogLoss before training, and training on it lowers that LogLoss."""
    from e2urec.encoding import answer_loss, collate, encode_prompts
    from e2urec.metrics import utility

    catalog, splits, corpus = small
    backbone = load_backbone("tiny", corpus=corpus, device="cpu", seed=1)
    part = splits.train[:64]
    prompts = [catalog.prompt(s) for s in part]
    labels = [s.label for s in part]
    batch = collate(backbone.format, encode_prompts(backbone.tokenizer, backbone.format, prompts))
    with torch.no_grad():
        loss, logits = answer_loss(
            backbone.model.eval(), backbone.format, batch, torch.tensor(labels)
        )
    scored = utility(labels, predict_like(backbone, prompts))
    assert loss.item() == pytest.approx(scored["logloss"], abs=1e-4)
    assert logits.shape == (64, backbone.model.config.vocab_size)

    before = utility(
        [s.label for s in splits.train],
        predict_like(backbone, [catalog.prompt(s) for s in splits.train]),
    )["logloss"]
    cfg = TrainConfig(epochs=2, lr=3e-3, objective="answer", patience=4)
    train_llmrec(backbone, catalog, splits.train, splits.valid, cfg, progress=False)
    after = utility(
        [s.label for s in splits.train],
        predict_like(backbone, [catalog.prompt(s) for s in splits.train]),
    )["logloss"]
    assert after < before - 0.02, (before, after)
    with pytest.raises(ValueError, match="objective must be 'target' or 'answer'"):
        TrainConfig(objective="answers")


def test_bf16_is_only_used_where_the_hardware_has_it(monkeypatch):
    """An AVX2-only CPU emulates bfloat16 matmuls (a SmolLM2 step went from 14 s to 330 s), so a
    recipe's bf16 must fall back to float32 there instead of making training 60x slower."""
    from e2urec import training

    cpu = torch.device("cpu")
    monkeypatch.setattr(training, "fast_bf16", lambda device: False)
    with training.autocast(cpu, True):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(training, "fast_bf16", lambda device: True)
    with training.autocast(cpu, True):
        assert torch.is_autocast_enabled("cpu")
    with training.autocast(cpu, False):
        assert not torch.is_autocast_enabled("cpu")


def test_activation_checkpointing_is_refused_for_a_model_that_cannot_and_undone_after_training():
    from e2urec.training import recomputed_activations

    refused = "does not support activation checkpointing: turn it off"
    with (
        pytest.raises(ValueError, match=refused),
        recomputed_activations(torch.nn.Linear(2, 2), enabled=True),
    ):
        pass
    with recomputed_activations(torch.nn.Linear(2, 2), enabled=False):  # off: nothing asked
        pass
    ds = generate_synthetic(SyntheticConfig(users=10, items=20, ratings_per_user=6, seed=1))
    catalog = Catalog.of(ds)
    backbone = load_backbone("tiny", corpus=catalog.texts(), device="cpu")
    samples = make_splits(ds, SampleConfig(max_samples=None, seed=0)).train[:16]
    seen = []
    train_llmrec(
        backbone,
        catalog,
        samples,
        [],
        TrainConfig(epochs=1, batch_size=8, activation_checkpointing=True),
        progress=False,
        on_step=lambda *_: seen.append(backbone.model.is_activation_checkpointing),
    )
    assert seen == [True, True]  # on while it trained
    assert not backbone.model.is_activation_checkpointing  # and off for what serves it next


def test_wrapping_a_model_in_lora_prints_no_warning_the_user_cannot_act_on():
    """peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` on every wrap; a real
    process (not pytest, which resets warning filters around collection) must not show it."""
    script = (
        "from peft import get_peft_model\n"
        "from e2urec.backbones import load_backbone\n"
        "from e2urec.lora import lora_config\n"
        "b = load_backbone('tiny', corpus=['a film about a dog', 'yes no'], device='cpu')\n"
        "get_peft_model(b.model, lora_config(b.model, r=4, alpha=8, dropout=0.0))\n"
        "print('wrapped')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0 and "wrapped" in run.stdout, run.stderr
    assert "is_gradient_checkpointing" not in run.stderr
