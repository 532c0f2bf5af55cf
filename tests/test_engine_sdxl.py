"""The engine's behaviours (tests/support/engine_behaviour.py) on SDXL's tiny components: the same
promises as SD 1.5's, through SDXL's two text encoders and pooled embedding."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.engine_behaviour import EngineBehaviourTests, FamilyModel


class TestSDXLEngine(EngineBehaviourTests):
    @pytest.fixture
    def family_model(self, tiny_sdxl: Path) -> FamilyModel:
        return FamilyModel(family="sdxl", path=tiny_sdxl)

    @pytest.fixture
    def family_loras(self, sdxl_lora_files: dict[str, Path]) -> tuple[Path, Path]:
        return sdxl_lora_files["a"], sdxl_lora_files["b"]
