"""LoRAs and AnimateDiff share the base image model: neither may break or leak into the other."""

from __future__ import annotations

from pathlib import Path

from tests.support.api import Api, register
from tests.support.video import video


def test_lora_images_and_animatediff_clips_on_one_model(vapi: Api, lora_files: dict[str, Path]) -> None:
    register(vapi, "lora", lora_files["a"], "lora-a")

    def image(**fields: object) -> bytes:
        return vapi.fetch(vapi.infer(seed=21, **fields)["images"][0])

    base, with_lora = image(), image(lora="lora-a")
    clip = video(vapi, model_id="tiny", num_frames=3, steps=1, scale=1, fps=8, seed=5)
    assert clip["error_code"] == 0, clip
    assert image(lora="lora-a") == with_lora
    again = video(vapi, model_id="tiny", num_frames=3, steps=1, scale=1, fps=8, seed=5)
    assert vapi.fetch(again["video_url"]) == vapi.fetch(clip["video_url"])
    assert image() == base
