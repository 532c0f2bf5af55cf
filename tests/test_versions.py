"""`version` picks a registered version of the model; the latest is the default."""

from __future__ import annotations

from pathlib import Path

import pytest

from daguerre.demo.tiny_models import build_tiny_sd15
from daguerre.services.catalog import Format, NewModel
from tests.support.api import Api


@pytest.fixture(scope="session")
def tiny_sd15_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd15(tmp_path_factory.mktemp("models") / "tiny-sd15-v2", seed=1)


def test_versions(api: Api, tiny_sd15_v2: Path) -> None:
    api.services.catalog.add(NewModel(path=tiny_sd15_v2, format=Format.DIFFUSERS, id="tiny", title="Tiny", version="2"))
    urls = {v: api.infer(seed=4, **({"version": v} if v else {}))["images"][0] for v in ("1", "2", None)}
    first, second, default = (api.fetch(url) for url in urls.values())
    assert default == second != first
    body = api.infer(version="7")
    assert body == {"error_code": 1, "message": "model tiny has no version '7'; known versions: 1, 2"}
