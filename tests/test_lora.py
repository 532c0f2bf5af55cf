"""LoRAs: both file layouts, the listing, and the errors. Switching without reloading the base
model, no leak into the next request, scales, several at once and A1111 prompt tags are in
tests/support/engine_behaviour.py, which every family inherits."""

from __future__ import annotations

from pathlib import Path

from tests.support.api import Api, register


def image(api: Api, **fields: object) -> bytes:
    body = api.infer(seed=11, **fields)
    assert body["error_code"] == 0, body
    return api.fetch(body["images"][0])


def test_kohya_and_diffusers_layouts_give_the_same_image(api: Api, lora_files: dict[str, Path]) -> None:
    assert register(api, "lora", lora_files["a"], "lora-a").options["layout"] == "diffusers"
    assert register(api, "lora", lora_files["a-kohya"], "lora-a-kohya").options["layout"] == "kohya"
    assert image(api, lora="lora-a") == image(api, lora="lora-a-kohya")


def test_models_lists_loras(api: Api, lora_files: dict[str, Path]) -> None:
    register(api, "lora", lora_files["b"], "lora-b")
    body = api.post("/api/models")
    assert [m["id"] for m in body["loras"]] == ["lora-b"]
    assert body["loras"][0]["type"] == "lora" and body["loras"][0]["base_model"] == "sd15"
    assert "lora-b" not in [m["id"] for m in body["models"]]


def test_lora_errors_cost_nothing(api: Api, lora_files: dict[str, Path]) -> None:
    register(api, "lora", lora_files["a"], "lora-a")
    register(api, "lora", lora_files["b"], "lora-b", family="sdxl")
    before = api.balance()
    cases = {
        "nope": ("lora", {"lora": "nope"}),
        "family": ("sdxl family", {"lora": "lora-b"}),
        "scale": ("invalid lora_scale '3': must be a number from -2 to 2", {"lora": "lora-a", "lora_scale": "3"}),
        "count": ("invalid lora_scale '1,1,1'", {"lora": "lora-a,lora-b", "lora_scale": "1,1,1"}),
        "twice": ("invalid lora 'lora-a,lora-a'", {"lora": "lora-a,lora-a"}),
        "tag": ("<lora:lora-a:heavy>", {"prompt": "x <lora:lora-a:heavy>"}),
        "checkpoint": ("lora model 'tiny' not found", {"lora": "tiny"}),
    }
    for name, (message, fields) in cases.items():
        body = api.infer(**fields)
        assert body["error_code"] == 1 and message in body["message"], (name, body)
    assert api.balance() == before
