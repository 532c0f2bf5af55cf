"""The demo: tiny random-weight models (an image model built for speed on a CPU, its LoRAs,
ControlNets and annotators, x2/x4 ESRGAN upscalers and video models), built locally, and a token to
try them.

Installing is a list of steps, each idempotent; a step whose models are all in the catalog is
skipped without importing torch, so a start on a data dir that has the demo takes no build time.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daguerre.errors import DaguerreError, NotFound
from daguerre.services.accounts import AccountService
from daguerre.services.catalog import (
    CatalogService,
    Format,
    Kind,
    ModelRecord,
    NewModel,
)
from daguerre.settings import Settings

if TYPE_CHECKING:
    from daguerre.engine.diffusers_classes import StableDiffusionPipeline

DEMO_MODEL_ID = "demo"
DEMO_TITLE = "Demo SD 1.5 (tiny random weights, built for CPU speed: draws noise)"
DEMO_TAGS = ["demo", "random-weights", "draws-noise"]
DEMO_CREDITS = 1000.0
CONTROLNETS = ("canny", "depth", "openpose")


def _registered(catalog: CatalogService, model_id: str) -> ModelRecord | None:
    try:
        return catalog.get(model_id)
    except NotFound:
        return None


def install_demo_model(settings: Settings, catalog: CatalogService) -> ModelRecord:
    """Idempotent: builds and registers the demo image model only if it is not there."""
    return _install_image_model(settings, catalog, DEMO_MODEL_ID, "sd15", DEMO_TITLE)


DEMO_XL_ID = "demo-xl"


def install_demo_xl(settings: Settings, catalog: CatalogService) -> ModelRecord:
    """Idempotent: builds and registers the demo SDXL model (native 1024x1024) only if absent."""
    title = "Demo SDXL (tiny random weights, built for CPU speed: draws noise)"
    return _install_image_model(settings, catalog, DEMO_XL_ID, "sdxl", title)


def _install_image_model(
    settings: Settings, catalog: CatalogService, model_id: str, family: str, title: str
) -> ModelRecord:
    record = _registered(catalog, model_id)
    if record is not None:
        return record
    from daguerre.demo.tiny_models import build_demo_sd15, build_demo_sdxl  # torch only when building

    folder = settings.models_dir / f"demo-{family}"
    if not (folder / "model_index.json").exists():
        {"sd15": build_demo_sd15, "sdxl": build_demo_sdxl}[family](folder)
    new = NewModel(
        path=folder, format=Format.DIFFUSERS, id=model_id, version="1", title=title, family=family, tags=DEMO_TAGS
    )
    return catalog.add(new)


def install_demo_upscalers(settings: Settings, catalog: CatalogService) -> list[ModelRecord]:
    """Idempotent: builds and registers tiny x2 and x4 RRDBNet upscalers (ids demo-esrgan-x2 and
    demo-esrgan-x4) only if they are not there."""
    records = []
    for scale in (2, 4):
        model_id = f"demo-esrgan-x{scale}"
        record = _registered(catalog, model_id)
        if record is None:
            from daguerre.demo.tiny_models import build_tiny_rrdbnet  # torch only when building

            path = settings.models_dir / f"{model_id}.pth"
            if not path.exists():
                build_tiny_rrdbnet(path, scale)
            # What `inspect_model("upscaler", path)` finds in this file (a test checks that it
            # does); written here because inspecting imports spandrel and torchvision, seconds of a
            # first start for an answer known in advance.
            new = NewModel(
                path=path,
                format=Format.SINGLE_FILE,
                kind=Kind.UPSCALER,
                id=model_id,
                version="1",
                title=f"Demo ESRGAN x{scale} (tiny random weights: draws noise)",
                family="esrgan",
                tags=["demo", "random-weights"],
                options={"scale": scale},
            )
            record = catalog.add(new)
        records.append(record)
    return records


def _install_each(catalog: CatalogService, extras: list[tuple[NewModel, Callable[[Path], object]]]) -> None:
    for new, build in extras:
        if _registered(catalog, new.id or "") is not None:
            continue
        if not new.path.exists():
            build(new.path)
        catalog.add(new)


def _demo_pipeline(catalog: CatalogService) -> StableDiffusionPipeline:
    from daguerre.engine.diffusers_classes import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(catalog.get(DEMO_MODEL_ID).latest.path, local_files_only=True)


def install_demo_adapters(settings: Settings, catalog: CatalogService) -> None:
    """A LoRA, an LCM-LoRA and the three ControlNets for the demo model, tiny random weights,
    all made from the demo pipeline loaded once."""
    from daguerre.demo import tiny_models as tiny  # torch only when building

    folder = settings.models_dir
    loaded: list[StableDiffusionPipeline] = []

    def base() -> StableDiffusionPipeline:
        if not loaded:
            loaded.append(_demo_pipeline(catalog))
        return loaded[0]

    _install_each(
        catalog,
        [
            (
                NewModel(
                    folder / "demo-lora.safetensors",
                    Format.SINGLE_FILE,
                    "Demo LoRA (random weights)",
                    kind=Kind.LORA,
                    id="demo-lora",
                    options={"layout": "kohya"},
                ),
                lambda path: tiny.build_tiny_lora(base(), path, layout="kohya", seed=1),
            ),
            (
                NewModel(
                    folder / "demo-lcm-lora.safetensors",
                    Format.SINGLE_FILE,
                    "Demo LCM-LoRA (random weights)",
                    kind=Kind.LORA,
                    id="demo-lcm-lora",
                    options={"layout": "diffusers", "lcm": True},
                ),
                lambda path: tiny.build_tiny_lora(base(), path, layout="diffusers", seed=2),
            ),
            *(
                (
                    NewModel(
                        folder / f"demo-controlnet-{name}",
                        Format.DIFFUSERS,
                        f"Demo ControlNet {name} (random weights)",
                        kind=Kind.CONTROLNET,
                        id=f"demo-controlnet-{name}",
                        options={"controlnet": name},
                    ),
                    # Narrow widths for the control map's encoder: it runs at full image size on
                    # every step, which at 512x768 would cost more than the demo UNet.
                    lambda path, seed=seed: tiny.build_tiny_controlnet(
                        base().unet, path, seed=seed, conditioning_channels=(4, 8, 16, 16)
                    ),
                )
                for seed, name in enumerate(CONTROLNETS, start=3)
            ),
        ],
    )


def install_demo_annotators(settings: Settings, catalog: CatalogService) -> None:
    """The depth and openpose annotators the ControlNets' preprocessing runs, random weights."""
    from daguerre.demo import tiny_models as tiny  # torch only when building

    folder = settings.models_dir
    _install_each(
        catalog,
        [
            (
                NewModel(
                    folder / "demo-depth",
                    Format.DIFFUSERS,
                    "Demo depth annotator (Depth Anything, random weights)",
                    kind=Kind.ANNOTATOR,
                    id="demo-depth",
                    family="any",
                    options={"annotator": "depth"},
                ),
                tiny.build_tiny_depth_annotator,
            ),
            (
                NewModel(
                    folder / "demo-openpose",
                    Format.SINGLE_FILE,
                    "Demo openpose annotator (random weights)",
                    kind=Kind.ANNOTATOR,
                    id="demo-openpose",
                    family="any",
                    options={"annotator": "openpose"},
                ),
                tiny.build_tiny_openpose_annotator,
            ),
        ],
    )


def _build_motion_adapter(catalog: CatalogService, folder: Path) -> Path:
    """A motion adapter whose modules fit the registered demo UNet's blocks."""
    from daguerre.demo.tiny_models import build_tiny_motion_adapter

    unet = json.loads((Path(catalog.get(DEMO_MODEL_ID).latest.path) / "unet" / "config.json").read_text())
    return build_tiny_motion_adapter(
        folder, block_out_channels=tuple(unet["block_out_channels"]), layers_per_block=unet["layers_per_block"]
    )


# A quarter of 832x480 and 1280x720, in multiples of 16: noise renders as well small, and fast.
DEMO_FRAME_SIZES = {"480p": [208, 128], "720p": [320, 176]}


def install_demo_video_models(settings: Settings, catalog: CatalogService) -> list[ModelRecord]:
    """Idempotent: tiny random Wan 2.1 text- and image-to-video models, and an AnimateDiff motion
    adapter that animates the demo image model. They default to short clips (9 frames, 4 steps) at
    a quarter of the nominal sizes (DEMO_FRAME_SIZES) so a CPU answers in seconds.
    """
    demos: list[tuple[str, str, str, Callable[[Path], Path], dict[str, object]]] = [
        ("demo-t2v", "demo-wan-t2v", "Demo Wan 2.1 text-to-video", lambda f: _build_wan(f, False), {}),
        ("demo-i2v", "demo-wan-i2v", "Demo Wan 2.1 image-to-video", lambda f: _build_wan(f, True), {}),
        (
            "demo-motion",
            "demo-motion-adapter",
            "Demo AnimateDiff motion adapter",
            lambda f: _build_motion_adapter(catalog, f),
            {"animates": [DEMO_MODEL_ID], "default_num_frames": 8},
        ),
    ]
    records = []
    for model_id, folder_name, title, build, options in demos:
        record = _registered(catalog, model_id)
        if record is None:
            from daguerre.services.probing import inspect_model  # torch only when building

            folder = settings.models_dir / folder_name
            if not folder.exists():
                build(folder)
            info = inspect_model("video", folder)
            record = catalog.add(
                NewModel(
                    path=folder,
                    format=Format(info.format),
                    kind=Kind.VIDEO,
                    id=model_id,
                    version="1",
                    title=f"{title} (tiny random weights: draws noise)",
                    family=info.family,
                    tags=["demo", "random-weights"],
                    options={
                        **info.options,
                        "default_num_frames": 9,
                        "default_steps": 4,
                        "frame_sizes": DEMO_FRAME_SIZES,
                        **options,
                    },
                )
            )
        records.append(record)
    return records


def _build_wan(folder: Path, image_to_video: bool) -> Path:
    from daguerre.demo.tiny_models import build_tiny_wan

    return build_tiny_wan(folder, image_to_video=image_to_video)


@dataclass(frozen=True)
class DemoStep:
    """One step of the demo's install: what a progress display names, the catalog ids it
    registers (all there: the step is skipped), and the function that installs them."""

    label: str
    model_ids: tuple[str, ...]
    install: Callable[[Settings, CatalogService], object]


def _load_torch(settings: Settings, catalog: CatalogService) -> None:
    # The imports every build needs, as a step of their own: on a first start they are the longest.
    import daguerre.demo.tiny_models  # noqa: F401


DEMO_STEPS = [
    DemoStep("Loading PyTorch, diffusers and transformers", (), _load_torch),
    DemoStep("Building the image model (demo)", (DEMO_MODEL_ID,), install_demo_model),
    DemoStep("Building the SDXL image model (demo-xl)", (DEMO_XL_ID,), install_demo_xl),
    DemoStep("Building the x2 and x4 upscalers", ("demo-esrgan-x2", "demo-esrgan-x4"), install_demo_upscalers),
    DemoStep(
        "Building the LoRA, the LCM-LoRA and the ControlNets",
        ("demo-lora", "demo-lcm-lora", *(f"demo-controlnet-{name}" for name in CONTROLNETS)),
        install_demo_adapters,
    ),
    DemoStep("Building the depth and openpose annotators", ("demo-depth", "demo-openpose"), install_demo_annotators),
    DemoStep(
        "Building the video models (Wan 2.1, AnimateDiff)",
        ("demo-t2v", "demo-i2v", "demo-motion"),
        install_demo_video_models,
    ),
]


def pending_demo_steps(catalog: CatalogService) -> list[DemoStep]:
    """The steps a start still has to run: none once the demo is installed (so no torch import)."""
    present = {model.id for model in catalog.list()}
    if all(set(step.model_ids) <= present for step in DEMO_STEPS):
        return []
    return [step for step in DEMO_STEPS if not step.model_ids or not set(step.model_ids) <= present]


def install_demo(
    settings: Settings, catalog: CatalogService, on_step: Callable[[DemoStep], None] | None = None
) -> None:
    """Everything `daguerre serve --demo` installs; `on_step` hears of each step before it runs."""
    for step in pending_demo_steps(catalog):
        if on_step is not None:
            on_step(step)
        step.install(settings, catalog)


def demo_token(settings: Settings, accounts: AccountService) -> str:
    """The demo token, kept in <data_dir>/demo-token (owner-only) so restarts reuse it."""
    path: Path = settings.data_dir / "demo-token"
    if path.exists():
        token = path.read_text().strip()
        try:
            info = accounts.authenticate(token)
        except DaguerreError:
            pass
        else:
            if info.balance < DEMO_CREDITS / 10:
                accounts.add_credits(info.id, DEMO_CREDITS - info.balance, "demo top-up")
            return token
    token, _ = accounts.create_token(name="demo", credits=DEMO_CREDITS)
    path.write_text(token + "\n")
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return token
