"""The demo: tiny random-weight models (an SD 1.5-topology image model, x2/x4 ESRGAN upscalers and
video models), built locally, and a token to try them."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

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

DEMO_MODEL_ID = "demo"
DEMO_TITLE = "Demo SD 1.5 (tiny random weights: draws noise)"
DEMO_CREDITS = 1000.0


def install_demo_model(settings: Settings, catalog: CatalogService) -> ModelRecord:
    """Idempotent: builds and registers the demo model only if it is not there."""
    try:
        return catalog.get(DEMO_MODEL_ID)
    except NotFound:
        pass
    from daguerre.demo.tiny_models import build_tiny_sd15  # torch only when building

    folder = settings.models_dir / "demo-sd15"
    if not (folder / "model_index.json").exists():
        build_tiny_sd15(folder)
    return catalog.add(
        NewModel(
            path=folder,
            format=Format.DIFFUSERS,
            id=DEMO_MODEL_ID,
            version="1",
            title=DEMO_TITLE,
            tags=["demo", "random-weights"],
        )
    )


def install_demo_upscalers(settings: Settings, catalog: CatalogService) -> list[ModelRecord]:
    """Idempotent: builds and registers tiny x2 and x4 RRDBNet upscalers (ids demo-esrgan-x2 and
    demo-esrgan-x4) only if they are not there."""
    from daguerre.demo.tiny_models import build_tiny_rrdbnet
    from daguerre.services.probing import inspect_model  # torch only when building

    records = []
    for scale in (2, 4):
        model_id = f"demo-esrgan-x{scale}"
        try:
            records.append(catalog.get(model_id))
            continue
        except NotFound:
            pass
        path = settings.models_dir / f"{model_id}.pth"
        if not path.exists():
            build_tiny_rrdbnet(path, scale)
        info = inspect_model(Kind.UPSCALER, path)
        new = NewModel(
            path=path,
            format=Format(info.format),
            kind=Kind.UPSCALER,
            id=model_id,
            version="1",
            title=f"Demo ESRGAN x{scale} (tiny random weights: draws noise)",
            family=info.family,
            tags=["demo", "random-weights"],
            options=info.options,
        )
        records.append(catalog.add(new))
    return records


def _install_extra(catalog: CatalogService, new: NewModel, build: Callable[[Path], object]) -> ModelRecord:
    try:
        return catalog.get(new.id or "")
    except NotFound:
        pass
    if not new.path.exists():
        build(new.path)
    return catalog.add(new)


def install_demo_extras(settings: Settings, catalog: CatalogService) -> None:
    """A LoRA, an LCM-LoRA, the three ControlNets and the depth and openpose annotators for the
    demo model, all tiny random weights, so every img2img/ControlNet/LoRA/LCM path can be tried."""
    from daguerre.demo import tiny_models as tiny  # torch only when building

    base = Path(catalog.get(DEMO_MODEL_ID).latest.path)
    folder = settings.models_dir
    extras: list[tuple[NewModel, Callable[[Path], object]]] = [
        (
            NewModel(
                folder / "demo-lora.safetensors",
                Format.SINGLE_FILE,
                "Demo LoRA (random weights)",
                kind=Kind.LORA,
                id="demo-lora",
                options={"layout": "kohya"},
            ),
            lambda path: tiny.build_tiny_lora(base, path, layout="kohya", seed=1),
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
            lambda path: tiny.build_tiny_lora(base, path, layout="diffusers", seed=2),
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
                lambda path, seed=seed: tiny.build_tiny_controlnet(base, path, seed=seed),
            )
            for seed, name in enumerate(("canny", "depth", "openpose"), start=3)
        ),
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
    ]
    for new, build in extras:
        _install_extra(catalog, new, build)


def install_demo_video_models(settings: Settings, catalog: CatalogService) -> list[ModelRecord]:
    """Idempotent: tiny random Wan 2.1 text- and image-to-video models, and an AnimateDiff motion
    adapter that animates the demo image model. They default to short clips (9 frames, 4 steps) so
    a CPU answers in seconds; on a CPU, DAGUERRE_VIDEO__RESOLUTION_SCALE=0.25 shortens it further.
    """
    from daguerre.demo.tiny_models import (  # torch only when building
        build_tiny_motion_adapter,
        build_tiny_wan,
    )
    from daguerre.services.probing import inspect_model

    demos: list[tuple[str, str, str, Callable[[Path], Path], dict[str, object]]] = [
        ("demo-t2v", "demo-wan-t2v", "Demo Wan 2.1 text-to-video", build_tiny_wan, {}),
        (
            "demo-i2v",
            "demo-wan-i2v",
            "Demo Wan 2.1 image-to-video",
            lambda folder: build_tiny_wan(folder, image_to_video=True),
            {},
        ),
        (
            "demo-motion",
            "demo-motion-adapter",
            "Demo AnimateDiff motion adapter",
            build_tiny_motion_adapter,
            {"animates": [DEMO_MODEL_ID], "default_num_frames": 8},
        ),
    ]
    records = []
    for model_id, folder_name, title, build, options in demos:
        try:
            records.append(catalog.get(model_id))
            continue
        except NotFound:
            pass
        folder = settings.models_dir / folder_name
        if not folder.exists():
            build(folder)
        info = inspect_model("video", folder)
        records.append(
            catalog.add(
                NewModel(
                    path=folder,
                    format=Format(info.format),
                    kind=Kind.VIDEO,
                    id=model_id,
                    version="1",
                    title=f"{title} (tiny random weights: draws noise)",
                    family=info.family,
                    tags=["demo", "random-weights"],
                    options={**info.options, "default_num_frames": 9, "default_steps": 4, **options},
                )
            )
        )
    return records


def install_demo(settings: Settings, catalog: CatalogService) -> None:
    """Everything `daguerre serve --demo` installs; each step is idempotent."""
    for install in DEMO_INSTALLERS:
        install(settings, catalog)


DEMO_INSTALLERS: list[Callable[[Settings, CatalogService], object]] = [
    install_demo_model,
    install_demo_upscalers,
    install_demo_extras,
    install_demo_video_models,
]


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
