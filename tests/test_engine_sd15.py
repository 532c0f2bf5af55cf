"""The engine's behaviours (tests/support/engine_behaviour.py) on SD 1.5's tiny components."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.engine_behaviour import EngineBehaviourTests, FamilyModel


class TestSD15Engine(EngineBehaviourTests):
    @pytest.fixture
    def family_model(self, tiny_sd15: Path) -> FamilyModel:
        return FamilyModel(family="sd15", path=tiny_sd15)

    @pytest.fixture
    def family_loras(self, lora_files: dict[str, Path]) -> tuple[Path, Path]:
        return lora_files["a"], lora_files["b"]
