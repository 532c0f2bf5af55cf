"""Every tensor of a LoRA file lands on a layer, or the file is refused saying what would be
dropped: at `models add` for tensors no LoRA loader applies, at load for ones that match no layer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from daguerre.demo.tiny_models import build_tiny_lora
from daguerre.engine.jobs import ModelSpec
from daguerre.engine.loading.lora import adapter_tensors
from daguerre.engine.runtime.local import LocalEngine
from daguerre.services.probing import UnsupportedModel, inspect_lora
from tests.support.api import Api, register


@pytest.fixture(scope="module")
def proj_loras(tiny_sd15: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One LoRA on the attention projections and proj_in/proj_out, in both layouts: diffusers'
    (mixing `proj_in.lora_A` with `to_q.lora.down`, as diffusers' training scripts save it) and kohya."""
    folder = tmp_path_factory.mktemp("proj-loras")
    return {
        layout: build_tiny_lora(
            tiny_sd15, folder / f"proj-{layout}.safetensors", layout, seed=5, extra_unet_targets=("proj_in", "proj_out")
        )
        for layout in ("diffusers", "kohya")
    }


def weight_tensors(path: Path) -> int:
    return sum(1 for key in load_file(str(path)) if not key.endswith(".alpha"))


def test_diffusers_alone_drops_the_attention_adapters_of_the_mixed_file(
    tiny_sd15: Path, proj_loras: dict[str, Path]
) -> None:
    # The upstream behaviour this server works around (diffusers 0.42.1, peft 0.21.2).
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15, local_files_only=True)
    pipe.load_lora_weights(str(proj_loras["diffusers"]), adapter_name="plain")
    assert len(adapter_tensors(pipe, "plain")) < weight_tensors(proj_loras["diffusers"])


def test_a_lora_with_proj_layers_applies_in_full_in_both_layouts(
    api: Api, engine: LocalEngine, tiny_sd15: Path, proj_loras: dict[str, Path]
) -> None:
    for layout, path in proj_loras.items():
        assert register(api, "lora", path, f"proj-{layout}").options["layout"] == layout
    images = {}
    for layout in proj_loras:
        body = api.infer(seed=3, lora=f"proj-{layout}")
        assert body["error_code"] == 0, body
        images[layout] = api.fetch(body["images"][0])
    assert images["diffusers"] == images["kohya"]
    loaded = engine.pipeline(ModelSpec("tiny", "1", str(tiny_sd15), "diffusers", "sd15"))
    landed = {name: len(adapter_tensors(loaded.pipe, name)) for name in loaded.loras.loaded}
    expected = weight_tensors(proj_loras["kohya"])
    assert expected == weight_tensors(proj_loras["diffusers"])
    assert sorted(count for name, count in landed.items() if name.startswith("proj_")) == [expected, expected]


def test_a_lora_with_tensors_for_missing_layers_is_refused_and_refunded(
    api: Api, tmp_path: Path, proj_loras: dict[str, Path]
) -> None:
    state = load_file(str(proj_loras["kohya"]))
    stray = "lora_unet_down_blocks_7_attentions_0_proj_in"  # a block the model does not have
    state |= {
        f"{stray}.lora_down.weight": torch.randn(4, 32),
        f"{stray}.lora_up.weight": torch.randn(32, 4),
        f"{stray}.alpha": torch.tensor(4.0),
    }
    path = tmp_path / "stray.safetensors"
    save_file(state, str(path))
    register(api, "lora", path, "stray")  # its keys look like a LoRA's: only the model can tell
    plain = api.images(api.infer(seed=3))
    # Another LoRA active when the refused one is tried: deleting the refused adapter makes peft
    # activate another one, which must not stay active.
    register(api, "lora", proj_loras["diffusers"], "good")
    assert api.infer(lora="good")["error_code"] == 0
    before = api.balance()
    body = api.infer(lora="stray")
    assert body["error_code"] == 1
    total = weight_tensors(path)
    assert body["message"] == (
        f"LoRA stray (version 1) was not applied: only {total - 2} of its {total} weight tensors match a layer of "
        "this model, and the rest would be silently dropped. It may be for another model family, or in a layout "
        "this server does not read."
    )
    assert api.balance() == before
    assert api.images(api.infer(seed=3)) == plain  # the pipeline is left clean: no adapter stays active


def test_models_add_refuses_tensors_no_lora_loader_applies(tmp_path: Path, proj_loras: dict[str, Path]) -> None:
    state = load_file(str(proj_loras["kohya"]))
    state["lora_unet_mid_block_attentions_0_proj_in.hada_w1_a"] = torch.randn(4, 32)  # LyCORIS LoHa
    path = tmp_path / "loha.safetensors"
    save_file(state, str(path))
    with pytest.raises(UnsupportedModel, match=r"1 of its \d+ tensors are not LoRA weights .*hada_w1_a"):
        inspect_lora(path)
