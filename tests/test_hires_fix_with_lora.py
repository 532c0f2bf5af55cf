"""Hires fix re-renders with the inference's LoRAs, read back from its stored record."""

from __future__ import annotations

from pathlib import Path

from tests.support.api import Api, register


def hires(api: Api, source: dict) -> bytes:
    body = api.post("/api/upscale", inf_id=source["inf_id"], url=source["images"][0], type="hires_fix", strength="1")
    assert body["error_code"] == 0, body
    return api.fetch(body["output"])


def test_hires_fix_uses_the_inference_lora(api: Api, lora_files: dict[str, Path]) -> None:
    register(api, "lora", lora_files["a"], "lora-a")
    plain = api.infer(seed=9)
    with_lora = api.infer(seed=9, lora="lora-a", lora_scale="1.5")
    # At strength 1 the re-render ignores the pixels, so only the stored LoRA can tell them apart.
    first = hires(api, with_lora)
    assert first != hires(api, plain)
    assert hires(api, with_lora) == first
    # And the LoRA does not stay active for the next request that did not ask for it.
    assert api.fetch(api.infer(seed=9)["images"][0]) == api.fetch(plain["images"][0])
