"""Token streaming with ``TextIteratorStreamer``: generation runs in a thread, text chunks arrive here.

The chunks joined and stripped are exactly what :meth:`answerer.vlm.VLM.generate` returns for
the same inputs (same greedy decoding, same ``skip_special_tokens``). An error inside
``generate`` is re-raised in the consuming thread, never swallowed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .vlm import VLM, Prepared

__all__ = ["stream_generate"]


def stream_generate(vlm: VLM, prepared: Prepared, max_new_tokens: int, min_new_tokens: int = 0,
                    timeout: float | None = 600.0) -> Iterator[str]:
    """Yield decoded text chunks of a single-row ``prepared`` prompt as they are generated.

    The context check runs before the first chunk (a too-long prompt raises here, not in a thread).
    """
    from transformers import TextIteratorStreamer

    if len(prepared.prompt_tokens) != 1:
        raise ValueError("streaming takes one prompt at a time")
    vlm.check_fits(prepared, max_new_tokens)
    streamer = TextIteratorStreamer(vlm.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            vlm.generate(prepared, max_new_tokens, min_new_tokens, streamer=streamer)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer below
            failure.append(exc)
            streamer.end()

    thread = threading.Thread(target=run, name="photodex-vlm-stream", daemon=True)
    thread.start()
    try:
        for chunk in streamer:
            if chunk:
                yield chunk
    finally:
        thread.join()
    if failure:
        raise failure[0]
