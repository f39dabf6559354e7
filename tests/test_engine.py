"""The inference engine: batching, prefix reuse, adapter hot-swap (no database, no HTTP)."""

from __future__ import annotations

import copy
import resource
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from e2urec.adapter_files import AdapterFileError, read_adapter, write_adapter
from e2urec.backbones import load_backbone
from e2urec.data import Catalog, SampleConfig, SyntheticConfig, generate_synthetic, make_splits
from e2urec.data.prompts import Prompt
from e2urec.lora import attention_qv_targets
from e2urec.scoring import predict_like
from service.serving.adapter_slot import ModelVersion, SwapError
from service.serving.engine import InferenceEngine


@pytest.fixture(scope="module")
def world():
    ds = generate_synthetic(SyntheticConfig(users=40, items=60, ratings_per_user=15, seed=5))
    splits = make_splits(ds, SampleConfig(max_samples=None))
    catalog = Catalog.of(ds)
    backbone = load_backbone("tiny", corpus=catalog.tokenizer_corpus(splits.train), device="cpu")
    users = sorted({s.user_id for s in splits.test})[:8]
    last = {s.user_id: s for s in splits.train + splits.valid + splits.test}
    items = sorted(catalog.items)
    requests = []
    for k, user in enumerate(users):
        s = last[user]
        prompts = [catalog.prompt_for(user, s.history, i) for i in items[k : k + 3 + k]]
        requests.append((prompts[0].prefix, [p.suffix for p in prompts]))
    return backbone, requests


def _random_adapter(backbone, seed: int, folder: Path, probes: list[dict] | None = None) -> Path:
    """A LoRA with random weights (a fresh LoRA is the identity: B starts at zero)."""
    torch.manual_seed(seed)
    model = get_peft_model(
        copy.deepcopy(backbone.model),
        LoraConfig(r=4, lora_alpha=8, target_modules=attention_qv_targets(backbone.model)),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    meta = {"probes": probes or []}
    write_adapter(model, folder, meta)
    return folder


def _expected(backbone, adapter_dir: Path | None, requests) -> list[list[float]]:
    """Scores computed the plain way: full prompts through a separately loaded model."""
    from peft import PeftModel

    model = copy.deepcopy(backbone.model)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    out = []
    for prefix, suffixes in requests:
        prompts = [Prompt(prefix, s) for s in suffixes]
        out.append(predict_like(backbone, prompts, model=model).tolist())
    return out


def _engine(backbone, **kw) -> InferenceEngine:
    clone = type(backbone)(copy.deepcopy(backbone.model), backbone.tokenizer, backbone.spec)
    return InferenceEngine(clone, ModelVersion(base=1), **kw).start()


@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_concurrent_requests_are_batched_and_match_plain_scoring(world, prefix_reuse):
    backbone, requests = world
    batches: list[tuple[int, int]] = []
    engine = _engine(
        backbone,
        max_wait_ms=200,
        max_batch_rows=64,
        prefix_reuse=prefix_reuse,
        on_batch=lambda n, rows: batches.append((n, rows)),
    )
    try:
        futures = [engine.submit(p, s) for p, s in requests]
        results = [f.result(timeout=30) for f in futures]
    finally:
        engine.stop()
    expected = _expected(backbone, None, requests)
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got.scores, want, atol=1e-5)
        assert got.version == ModelVersion(base=1)
    assert max(n for n, _ in batches) > 1  # requests shared a model batch
    assert sum(n for n, _ in batches) == len(requests)


def test_a_request_larger_than_a_batch_is_chunked(world):
    backbone, requests = world
    prefix, _ = requests[0]
    _, all_suffixes = max(requests, key=lambda r: len(r[1]))
    engine = _engine(backbone, max_batch_rows=3)
    try:
        got = engine.submit(prefix, all_suffixes).result(timeout=30)
    finally:
        engine.stop()
    want = _expected(backbone, None, [(prefix, all_suffixes)])[0]
    np.testing.assert_allclose(got.scores, want, atol=1e-5)


def test_adapter_swap_changes_scores_to_the_adapters(world, tmp_path):
    backbone, requests = world
    a = _random_adapter(backbone, 1, tmp_path / "a")
    b = _random_adapter(backbone, 2, tmp_path / "b")
    engine = _engine(backbone)
    try:
        base_scores = engine.submit(*requests[0]).result(timeout=30)
        report = engine.swap_adapter(read_adapter(a), ModelVersion(1, 7)).result(timeout=30)
        assert report.version == ModelVersion(1, 7) and engine.version.adapter == 7
        with_a = engine.submit(*requests[0]).result(timeout=30)
        engine.swap_adapter(read_adapter(b), ModelVersion(1, 8)).result(timeout=30)
        with_b = engine.submit(*requests[0]).result(timeout=30)
        engine.swap_adapter(None, ModelVersion(1, None)).result(timeout=30)
        back = engine.submit(*requests[0]).result(timeout=30)
    finally:
        engine.stop()
    assert with_a.version.label == "base-1/adapter-7" and with_b.version.adapter == 8
    np.testing.assert_allclose(with_a.scores, _expected(backbone, a, requests[:1])[0], atol=1e-5)
    np.testing.assert_allclose(with_b.scores, _expected(backbone, b, requests[:1])[0], atol=1e-5)
    np.testing.assert_allclose(back.scores, base_scores.scores, atol=1e-6)
    assert not np.allclose(with_a.scores, with_b.scores, atol=1e-3)


def test_a_failed_smoke_test_keeps_the_old_adapter(world, tmp_path):
    backbone, requests = world
    good = _random_adapter(backbone, 1, tmp_path / "good")
    # probes recorded with another adapter: this one cannot reproduce them
    wrong = [{"prefix": requests[0][0], "suffix": requests[0][1][0], "p_like": 0.999}]
    bad = _random_adapter(backbone, 2, tmp_path / "bad", probes=wrong)
    engine = _engine(backbone)
    try:
        engine.swap_adapter(read_adapter(good), ModelVersion(1, 1)).result(timeout=30)
        before = engine.submit(*requests[0]).result(timeout=30)
        with pytest.raises(SwapError, match="smoke test"):
            engine.swap_adapter(read_adapter(bad), ModelVersion(1, 2)).result(timeout=30)
        after = engine.submit(*requests[0]).result(timeout=30)
    finally:
        engine.stop()
    assert after.version == ModelVersion(1, 1)
    np.testing.assert_allclose(after.scores, before.scores, atol=1e-6)
    assert list(engine.backbone.model.peft_config) == ["v1"]  # the failed one was removed


def test_an_adapter_for_another_base_is_refused_before_the_model_is_touched(world, tmp_path):
    """The slot checks every LoRA tensor against the base's modules first: an adapter whose
    shapes do not fit is refused, and the serving model is not even wrapped by peft."""
    from peft import PeftModel

    backbone, requests = world
    files = read_adapter(_random_adapter(backbone, 1, tmp_path / "a"))
    files.state_dict = {
        k: torch.zeros(v.shape[0], v.shape[1] + 1) if "lora_A" in k else v
        for k, v in files.state_dict.items()
    }  # as if trained on a model with a wider hidden size
    engine = _engine(backbone)
    try:
        before = engine.submit(*requests[0]).result(timeout=30)
        with pytest.raises(SwapError, match="does not fit this base model"):
            engine.swap_adapter(files, ModelVersion(1, 1)).result(timeout=30)
        after = engine.submit(*requests[0]).result(timeout=30)
    finally:
        engine.stop()
    assert not isinstance(engine.backbone.model, PeftModel)
    assert after.version == before.version and after.scores == before.scores


def test_a_changed_adapter_folder_is_refused(world, tmp_path):
    backbone, _ = world
    folder = _random_adapter(backbone, 1, tmp_path / "a")
    checksum = read_adapter(folder).checksum
    (folder / "adapter_config.json").write_text(
        (folder / "adapter_config.json").read_text().replace('"r": 4', '"r": 4 ')
    )
    with pytest.raises(AdapterFileError, match="checksum mismatch"):
        read_adapter(folder, checksum)
    with pytest.raises(AdapterFileError, match="not an adapter folder"):
        read_adapter(tmp_path)


def test_many_swaps_keep_memory_flat(world, tmp_path):
    backbone, requests = world
    folders = [_random_adapter(backbone, i, tmp_path / f"a{i}") for i in range(3)]
    loaded = [read_adapter(f) for f in folders]
    engine = _engine(backbone)
    try:
        engine.swap_adapter(loaded[0], ModelVersion(1, 1)).result(timeout=30)
        held = engine.adapter_parameters()
        for version in range(2, 8):  # warm-up: allocator pools settle
            engine.swap_adapter(loaded[version % 3], ModelVersion(1, version)).result(timeout=30)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for version in range(8, 68):
            engine.swap_adapter(loaded[version % 3], ModelVersion(1, version)).result(timeout=30)
            engine.submit(*requests[0]).result(timeout=30)
        rss_growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    finally:
        engine.stop()
    assert engine.adapter_parameters() == held  # one adapter's tensors, not sixty
    assert len(engine.backbone.model.peft_config) == 1
    assert rss_growth_kb < 20_000, f"peak memory grew {rss_growth_kb} KiB over 60 swaps"


def test_every_response_is_scored_by_exactly_one_version(world, tmp_path):
    backbone, requests = world
    folders = {v: _random_adapter(backbone, v, tmp_path / f"v{v}") for v in (1, 2, 3)}
    expected = {None: _expected(backbone, None, requests)}
    expected |= {v: _expected(backbone, f, requests) for v, f in folders.items()}
    engine = _engine(backbone, max_wait_ms=2)
    results: list[tuple[int, object]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def client(k: int) -> None:
        while not stop.is_set():
            try:
                idx = k % len(requests)
                results.append((idx, engine.submit(*requests[idx]).result(timeout=30)))
            except BaseException as exc:  # any failure fails the test below
                errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        for v in (1, 2, 3, 1, 2):
            engine.swap_adapter(read_adapter(folders[v]), ModelVersion(1, v)).result(timeout=30)
            for _ in range(3):
                engine.submit(*requests[0]).result(timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join()
        engine.stop()
    assert not errors
    seen = {r.version.adapter for _, r in results}
    assert len(seen) >= 3, seen
    for idx, r in results:
        np.testing.assert_allclose(r.scores, expected[r.version.adapter][idx], atol=1e-5)


def test_a_cancelled_request_never_takes_the_engine_down(world):
    """A client that times out cancels its future while the loop is busy; the loop must skip it
    (or ignore the late answer), stay alive, and answer everyone after it."""
    import asyncio

    backbone, requests = world
    engine = _engine(backbone)
    try:
        gate = threading.Event()
        stalled = engine._control(lambda: gate.wait(10))  # the loop is busy until released

        async def timed_out() -> None:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(engine.score(*requests[0]), 0.01)

        asyncio.run(timed_out())  # its future is cancelled while it waits in the queue
        late = engine.submit(*requests[1])  # taken in the same batch as the cancelled one
        gate.set()
        stalled.result(5)
        assert len(late.result(10).scores) == len(requests[1][1])
        assert engine.running
        for prefix, suffixes in requests[2:]:
            assert len(engine.submit(prefix, suffixes).result(10).scores) == len(suffixes)
    finally:
        engine.stop()


def test_a_dead_loop_is_noticed_and_restarted(world, monkeypatch):
    """Even an error the loop cannot survive (here a BaseException from scoring) leaves the
    engine restartable: ``running`` turns false, the waiting request gets an error, and
    ``ensure_running`` brings the loop back for the next requests."""
    backbone, requests = world
    engine = _engine(backbone)
    try:
        real = engine._scores
        calls = {"n": 0}

        def dying(batch):
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt("simulated fatal error in the loop")
            return real(batch)

        monkeypatch.setattr(engine, "_scores", dying)
        doomed = engine.submit(*requests[0])
        with pytest.raises(RuntimeError, match="inference engine"):
            doomed.result(10)
        wait = threading.Event()
        for _ in range(100):
            if not engine.running:
                break
            wait.wait(0.05)
        assert not engine.running and engine.deaths == 1
        assert engine.ensure_running() is True  # restarted
        assert len(engine.submit(*requests[1]).result(10).scores) == len(requests[1][1])
    finally:
        engine.stop()


def test_a_model_change_jumps_the_queue_of_waiting_requests(world, tmp_path):
    """While the engine holds an older version than the registry, every answer is a
    non-personalised one: a swap is applied after the batch being scored, not after every
    request already waiting."""
    backbone, requests = world
    engine = _engine(backbone, max_batch_rows=4)
    try:
        busy = threading.Event()
        stalled = engine._control(lambda: busy.wait(10))
        waiting = [engine.submit(p, s) for p, s in requests for _ in range(3)]
        seen = {}
        swap = engine._control(lambda: seen.setdefault("done", sum(f.done() for f in waiting)))
        busy.set()
        stalled.result(10)
        swap.result(30)
        for f in waiting:
            f.result(30)
        assert seen["done"] == 0, seen  # applied before any of the waiting requests
    finally:
        engine.stop()
