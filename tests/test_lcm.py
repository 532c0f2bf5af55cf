"""lcm=true: an LCM-LoRA for the model's family with the LCM scheduler, at half the cost."""

from __future__ import annotations

from pathlib import Path

from daguerre.services.accounts import to_milli
from daguerre.services.pricing import image_cost
from daguerre.settings import Pricing
from tests.support.api import Api, register


def test_lcm_halves_the_cost() -> None:
    pricing = Pricing()
    assert image_cost(pricing, 512, 768, 30, 4, lcm=True) * 2 == image_cost(pricing, 512, 768, 30, 4) == to_milli(3)


def test_lcm_needs_an_lcm_lora_for_the_family(api: Api, lora_files: dict[str, Path]) -> None:
    register(api, "lora", lora_files["lcm"], "lcm-xl", family="sdxl", lcm=True)
    register(api, "lora", lora_files["a"], "plain")
    before = api.balance()
    body = api.infer(lcm="true")
    assert body["error_code"] == 1 and "LCM-LoRA for the sd15 family" in body["message"], body
    assert api.balance() == before


def test_lcm_runs_with_its_defaults_at_half_the_cost(api: Api, lora_files: dict[str, Path]) -> None:
    register(api, "lora", lora_files["lcm"], "lcm", lcm=True)
    fields = {"num_images": 2, "seed": 3}
    plain = api.infer(**fields)
    fast = api.infer(lcm="true", **fields)
    assert fast["error_code"] == 0, fast
    assert fast["credit_cost"] * 2 == plain["credit_cost"] == 0.1
    assert api.fetch(fast["images"][0]) != api.fetch(plain["images"][0])
    assert api.fetch(api.infer(lcm="true", **fields)["images"][0]) == api.fetch(fast["images"][0])
    assert api.fetch(api.infer(**fields)["images"][0]) == api.fetch(plain["images"][0])  # LCM does not leak
    record = api.services.inference.inferences.get(fast["inf_id"], api.services.accounts.authenticate(api.token).id)
    assert record.resolved["scheduler"] == "LCM" and record.resolved["scale"] == 1.5
    assert record.resolved["steps"] == 2  # the client's explicit steps win over LCM's default of 6
    defaults = api.post(
        "/api/inference", model_id="tiny", prompt="a cat", width=128, height=128, num_images=1, lcm="true"
    )
    record = api.services.inference.inferences.get(defaults["inf_id"], api.services.accounts.authenticate(api.token).id)
    assert record.resolved["steps"] == 6
