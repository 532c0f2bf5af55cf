"""quiet.py silences exactly the third-party noise it names; every other warning still shows."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import pytest

from daguerre.quiet import quiet_third_party

# (message, category, the module the warning is attributed to), as the libraries raise them.
KNOWN_NOISE = [
    (
        "`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`.",
        FutureWarning,
        "torch.jit._script",
    ),
    (
        "The module 'mediapipe' is not installed. The package will have limited functionality.",
        UserWarning,
        "controlnet_aux.mediapipe_face.mediapipe_face_common",
    ),
    (
        "Importing from timm.models.layers is deprecated, please import via timm.layers",
        FutureWarning,
        "timm.models.layers",
    ),
    (
        "Overwriting tiny_vit_5m_224 in registry with controlnet_aux.segment_anything.modeling.tiny_vit_sam."
        "tiny_vit_5m_224. This is because the name being registered conflicts with an existing name.",
        UserWarning,
        "controlnet_aux.segment_anything.modeling.tiny_vit_sam",
    ),
]


def _shown(message: str, category: type[Warning], module: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module)
    return bool(caught)


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # An operator's own setting of the variable quiet.py defaults; restored after the test.
    monkeypatch.setenv("TQDM_DISABLE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # so that a warning not filtered shows every time
        quiet_third_party()
        yield


@pytest.mark.usefixtures("quiet")
def test_the_known_third_party_noise_is_silenced() -> None:
    assert [message for message, category, module in KNOWN_NOISE if _shown(message, category, module)] == []


@pytest.mark.usefixtures("quiet")
def test_other_warnings_still_show() -> None:
    assert _shown("something daguerre should hear about", UserWarning, "daguerre.engine")
    # The same words from another package, or another category, are not silenced.
    assert _shown("The module 'mediapipe' is not installed.", UserWarning, "some_other_package")
    assert _shown("Overwriting foo in registry with bar", UserWarning, "timm.models._registry")
    assert _shown("Importing from timm.models.layers is deprecated", DeprecationWarning, "timm.models.layers")


@pytest.mark.usefixtures("quiet")
def test_an_operators_progress_bar_setting_is_kept() -> None:
    assert os.environ["TQDM_DISABLE"] == "0"
