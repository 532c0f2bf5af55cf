"""The CLIP-chunk limit of prompts (max_prompt_chunks): refused with the field named, nothing
charged, before anything is encoded."""

from __future__ import annotations

import pytest

from daguerre.engine.runtime.local import LocalEngine
from tests.support.api import Api


def test_a_prompt_over_the_chunk_limit_is_refused_and_costs_nothing(
    api: Api, engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "_max_prompt_chunks", 2)
    before = api.balance()
    long = ", ".join(["a lighthouse on a cliff"] * 40)  # about 240 tokens: 4 chunks
    body = api.post("/api/inference", model_id="tiny", prompt=long, width=128, height=128, steps=2, num_images=1)
    assert body["error_code"] == 1
    assert body["message"].startswith("invalid prompt: 4 chunks of 75 CLIP tokens, more than this server's limit of 2")
    negative = api.post(
        "/api/inference",
        model_id="tiny",
        prompt="a cat",
        negative_prompt=long,
        use_default_neg="false",
        width=128,
        height=128,
        steps=2,
        num_images=1,
    )
    assert negative["message"].startswith("invalid negative_prompt: 4 chunks")
    assert api.balance() == before
    assert api.infer(prompt=", ".join(["a lighthouse"] * 20))["error_code"] == 0  # within the limit
