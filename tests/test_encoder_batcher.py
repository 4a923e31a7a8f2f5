"""Dynamic batching of encoder work (issue 20.3): each caller gets its own rows, whatever shares its batch."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from ui.api.batcher import EncoderBatcher, RequestAbandoned, abandon_on, encode_each

DIM = 8


class FakeEncoder:
    """Rows that identify their item; an item "BAD" makes the whole call fail, as an unusable image would."""

    spec = SimpleNamespace(embed_dim=DIM, id="fake")
    image_size = 32

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, list]] = []
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def _rows(self, kind: str, items: list) -> np.ndarray:
        self.calls.append((kind, list(items)))
        self.gate.wait(30)
        time.sleep(self.delay)
        if any(x == "BAD" for x in items):
            raise ValueError("unusable item")
        out = np.zeros((len(items), DIM), np.float32)
        for r, x in enumerate(items):
            out[r, hash((kind, x)) % DIM] = 1.0
            out[r, 0] += float(len(str(x)))
        return out

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self._rows("text", texts)

    def encode_images(self, images: list) -> np.ndarray:
        return self._rows("image", images)


def _expected(kind: str, items: list) -> np.ndarray:
    return FakeEncoder()._rows(kind, items)


def _while_busy(batcher: EncoderBatcher, enc: FakeEncoder, kind: str, requests: list[list]) -> list:
    """Submit ``requests`` while the model thread is held on an earlier call, so they queue together and
    the next gather takes them all in one window; returns each one's rows or exception."""
    enc.gate.clear()
    earlier = batcher.submit(kind, ["earlier"])
    deadline = time.monotonic() + 30
    while not enc.calls and time.monotonic() < deadline:  # the model thread took it and waits at the gate
        time.sleep(0.01)
    assert enc.calls, "the model thread did not start"
    with ThreadPoolExecutor(len(requests)) as pool:
        fn = batcher.encode_texts if kind == "text" else batcher.encode_images
        futures = [pool.submit(fn, r) for r in requests]
        while batcher._queue.qsize() < len(requests) and time.monotonic() < deadline:
            time.sleep(0.01)
        enc.gate.set()
        earlier.result(30)
        out = []
        for f in futures:
            try:
                out.append(f.result(30))
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
    return out


def test_concurrent_callers_share_one_call_and_get_their_own_rows():
    enc = FakeEncoder()
    batcher = EncoderBatcher(enc, window_s=0.2, max_batch=64)
    try:
        texts = [[f"q{i}", f"q{i} +extra"] if i % 3 == 0 else [f"q{i}"] for i in range(12)]
        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(batcher.encode_texts, texts))
        for items, rows in zip(texts, got):
            np.testing.assert_array_equal(rows, _expected("text", items))
        assert len(enc.calls) < 12  # gathered: fewer model calls than callers
        assert sum(len(c[1]) for c in enc.calls) == sum(len(t) for t in texts)
    finally:
        batcher.close()


def test_one_bad_item_fails_only_its_own_request():
    enc = FakeEncoder()
    batcher = EncoderBatcher(enc, window_s=0.0, max_batch=64)
    try:
        items = [["a"], ["b", "c"], ["BAD"], ["d"]]
        outcomes = _while_busy(batcher, enc, "image", items)
        assert [len(c[1]) for c in enc.calls][:2] == [1, 5]  # the earlier call, then all four together
        assert isinstance(outcomes[2], ValueError)
        for i in (0, 1, 3):
            np.testing.assert_array_equal(outcomes[i], _expected("image", items[i]))
        assert ["BAD"] in [c[1] for c in enc.calls]  # the bad one was retried alone
    finally:
        batcher.close()


def test_an_abandoned_caller_is_dropped_and_costs_the_others_nothing():
    enc = FakeEncoder()
    enc.gate.clear()  # the model is busy with an earlier batch while the next requests queue
    batcher = EncoderBatcher(enc, window_s=0.0, max_batch=64)
    try:
        busy = threading.Thread(target=batcher.encode_texts, args=(["earlier"],))
        busy.start()
        time.sleep(0.1)
        gone = threading.Event()
        results: dict[str, object] = {}

        def call(name: str, abandon: threading.Event | None) -> None:
            try:
                if abandon is None:
                    results[name] = batcher.encode_texts([name])
                else:
                    with abandon_on(abandon):
                        results[name] = batcher.encode_texts([name])
            except RequestAbandoned as exc:
                results[name] = exc

        threads = [threading.Thread(target=call, args=("kept1", None)),
                   threading.Thread(target=call, args=("dropped", gone)),
                   threading.Thread(target=call, args=("kept2", None))]
        for t in threads:
            t.start()
        time.sleep(0.2)
        gone.set()  # its client disconnected while it waited
        enc.gate.set()
        for t in [busy, *threads]:
            t.join(30)
        assert isinstance(results["dropped"], RequestAbandoned)
        for name in ("kept1", "kept2"):
            np.testing.assert_array_equal(results[name], _expected("text", [name]))
        assert all("dropped" not in c[1] for c in enc.calls)  # never encoded
    finally:
        batcher.close()


def test_a_batch_larger_than_the_models_batch_size_is_split():
    enc = FakeEncoder()
    batcher = EncoderBatcher(enc, window_s=0.0, max_batch=1000, model_batch=4)
    try:
        reqs = [[f"t{i}-{j}" for j in range(3)] for i in range(5)]  # 15 items in one window, model batch 4
        got = _while_busy(batcher, enc, "text", reqs)
        for r, rows in zip(reqs, got):
            np.testing.assert_array_equal(rows, _expected("text", r))
        assert [len(c[1]) for c in enc.calls[1:]] == [4, 4, 4, 3]
    finally:
        batcher.close()


def test_a_lone_request_waits_at_most_the_window():
    enc = FakeEncoder()
    batcher = EncoderBatcher(enc, window_s=0.05)
    try:
        batcher.encode_texts(["warm"])
        start = time.perf_counter()
        batcher.encode_texts(["alone"])
        assert time.perf_counter() - start < 0.05 + 0.5  # the window plus scheduling slack on a busy CPU
    finally:
        batcher.close()


def test_encode_each_isolates_items_with_a_real_model(tiny_clip):
    """The tiny CLIP through the batcher: same rows as encoding alone, and an unusable item (not an image)
    among good ones fails only itself. fp32, so rows do not depend on what shares their batch."""
    from PIL import Image

    from indexer.encode.encoders import load_encoder

    tiny_encoder = load_encoder("local-dir:" + str(tiny_clip[0]), device="cpu", precision="fp32")

    batcher = EncoderBatcher(tiny_encoder, window_s=0.05, model_batch=2)
    try:
        imgs = [Image.new("RGB", (40, 30), c) for c in ("red", "green", "blue")]
        rows = encode_each(batcher, "image", [imgs[0], "not an image", imgs[1], imgs[2]])
        assert isinstance(rows[1], Exception)
        alone = tiny_encoder.encode_images(imgs)
        for got, want in zip([rows[0], rows[2], rows[3]], alone):
            np.testing.assert_allclose(got, want, atol=1e-5)
        tensor = __import__("torch").stack([tiny_encoder.preprocess(im) for im in imgs])  # an index job's batch
        np.testing.assert_allclose(batcher.encode_images(tensor), alone, atol=1e-5)
        texts = batcher.encode_texts(["a red photo", "a dog", "x"])
        np.testing.assert_allclose(texts, tiny_encoder.encode_texts(["a red photo", "a dog", "x"]), atol=1e-5)
    finally:
        batcher.close()


@pytest.mark.parametrize("window", [0.0, 0.002])
def test_closing_answers_what_was_queued_and_refuses_more(window):
    enc = FakeEncoder(delay=0.01)
    batcher = EncoderBatcher(enc, window_s=window)
    futures = [batcher.submit("text", [f"x{i}"]) for i in range(4)]
    batcher.close()
    assert all(f.result(30).shape == (1, DIM) for f in futures)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.encode_texts(["late"])
