"""The operator's command line: serve, tokens, credits, models."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from daguerre.errors import DaguerreError
from daguerre.settings import Settings

if TYPE_CHECKING:
    from daguerre.services.catalog import CatalogService
    from daguerre.services.container import Database

app = typer.Typer(help="daguerre: a self-hosted server that speaks the SinkIn API.", no_args_is_help=True)
tokens_app = typer.Typer(help="Access tokens.", no_args_is_help=True)
credits_app = typer.Typer(help="Credits.", no_args_is_help=True)
models_app = typer.Typer(help="The model catalog.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
app.add_typer(credits_app, name="credits")
app.add_typer(models_app, name="models")

console = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data folder (default $DAGUERRE_DATA_DIR or ~/.daguerre)")
]


class EngineChoice(StrEnum):
    local = "local"
    ray = "ray"


def _settings(data_dir: Path | None) -> Settings:
    # Passed to the constructor, so the flag outranks DAGUERRE_DATA_DIR and the config file.
    return Settings(data_dir=data_dir) if data_dir is not None else Settings()


def _database(settings: Settings) -> Database:
    from daguerre.services.container import open_database

    return open_database(settings)


def _fail(exc: Exception) -> NoReturn:
    err.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="Port")] = None,
    data_dir: DataDir = None,
    demo: Annotated[bool, typer.Option("--demo", help="Install the demo models and print a demo token")] = False,
    engine: Annotated[
        EngineChoice | None,
        typer.Option(help="local (in this process) or ray (GPU workers on a Ray Serve cluster; `ray` settings)"),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="The Ray cluster's head (GCS), host:port, with --engine ray")
    ] = None,
) -> None:
    """Start the HTTP server."""
    from daguerre.quiet import quiet_third_party

    quiet_third_party()  # before anything imports the libraries it quiets
    from daguerre.app import GracefulServer, create_app
    from daguerre.demo.install import demo_token

    settings = _settings(data_dir)
    settings = settings.model_copy(update={"host": host or settings.host, "port": port or settings.port})
    if engine is not None or ray_address is not None:
        ray = settings.ray.model_copy(update={"address": ray_address or settings.ray.address})
        settings = settings.model_copy(update={"engine": engine.value if engine else settings.engine, "ray": ray})
    token = None
    if demo:
        database = _database(settings)
        _install_demo(settings, database)
        token = demo_token(settings, database.accounts)
        database.engine.dispose()
    url = settings.public_url or f"http://{settings.host}:{settings.port}"
    console.print(f"daguerre on [bold]{url}[/bold]  (data: {settings.data_dir})", soft_wrap=True)
    if token:
        console.print(
            "demo models (tiny random weights: they draw noise): [bold]demo[/bold] (images, and clips via "
            "AnimateDiff), [bold]demo-t2v[/bold] and [bold]demo-i2v[/bold] (video)",
            soft_wrap=True,
        )
        # A server listening on every interface is still opened locally at 127.0.0.1.
        local = url.replace("://0.0.0.0:", "://127.0.0.1:")
        console.print(
            f"open [bold]{local}/[/bold] in a browser (the playground) and paste the demo access token "
            f"(also in {settings.data_dir / 'demo-token'}):",
            soft_wrap=True,
        )
        print(token, flush=True)
    GracefulServer(create_app(settings), settings).run()


def _install_demo(settings: Settings, database: Database) -> None:
    """Builds what the demo lacks under one progress display naming each step; nothing to show
    once it is installed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from daguerre.demo.install import DemoStep, install_demo, pending_demo_steps

    steps = pending_demo_steps(database.catalog)
    if not steps:
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("Building the demo models", total=len(steps))

        def on_step(step: DemoStep) -> None:
            progress.update(task, description=step.label, completed=steps.index(step))

        install_demo(settings, database.catalog, on_step=on_step)
        progress.update(task, description="Built the demo models (tiny random weights)", completed=len(steps))


@tokens_app.command("create")
def tokens_create(
    credits: Annotated[float, typer.Option(help="Starting credits")] = 0.0,
    name: Annotated[str, typer.Option(help="A label for the operator")] = "",
    data_dir: DataDir = None,
) -> None:
    """Create a token; it is printed once, as the last line, after its webhook signing secret."""
    database = _database(_settings(data_dir))
    token, info = database.accounts.create_token(name=name, credits=credits)
    console.print(f"created token {info.prefix}... ({name or 'no name'}) with {info.balance:g} credits")
    # print, not rich: a long secret must not be wrapped, and scripts read these lines.
    print(f"webhook secret: {database.accounts.webhook_secret(info.id)}")
    print(token)


@tokens_app.command("webhook-secret")
def tokens_webhook_secret(
    token: Annotated[str, typer.Argument(help="The token, or its prefix from `tokens list`")],
    data_dir: DataDir = None,
) -> None:
    """Make a new webhook signing secret for a token and print it (the old one stops signing)."""
    database = _database(_settings(data_dir))
    try:
        info = database.accounts.find(token)
        secret = database.accounts.rotate_webhook_secret(info.id)
    except DaguerreError as exc:
        _fail(exc)
    console.print(f"new webhook secret of token {info.prefix}... (the old one no longer signs):")
    print(secret)


@tokens_app.command("list")
def tokens_list(data_dir: DataDir = None) -> None:
    """List tokens (their prefixes; tokens themselves are stored hashed)."""
    database = _database(_settings(data_dir))
    table = Table("id", "prefix", "name", "credits", "created")
    for t in database.accounts.list_tokens():
        table.add_row(str(t.id), t.prefix, t.name, f"{t.balance:g}", t.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


# ignore_unknown_options: a negative amount ("-5") is an argument, not an unknown option.
@credits_app.command("add", context_settings={"ignore_unknown_options": True})
def credits_add(
    token: Annotated[str, typer.Argument(help="The token, or its prefix from `tokens list`")],
    amount: Annotated[float, typer.Argument(help="Credits to add; negative to take away, never below a zero balance")],
    data_dir: DataDir = None,
) -> None:
    """Add credits to a token, or take them away (`credits add TOKEN -5`)."""
    database = _database(_settings(data_dir))
    try:
        info = database.accounts.find(token)
        balance = database.accounts.add_credits(info.id, amount)
    except DaguerreError as exc:
        _fail(exc)
    console.print(f"token {info.prefix}... now has {balance:g} credits")


def _frame_sizes(values: list[str]) -> dict[str, list[int]]:
    sizes: dict[str, list[int]] = {}
    for value in values:
        name, _, size = value.partition("=")
        width, _, height = size.lower().partition("x")
        if name not in ("480p", "720p") or not (width.isdigit() and height.isdigit()):
            _fail(ValueError(f"--frame-size {value!r}: expected 480p=WIDTHxHEIGHT or 720p=WIDTHxHEIGHT"))
        # Wan's VAE downsamples by 8 and its transformer patches by 2.
        if int(width) % 16 or int(height) % 16 or not (16 <= int(height) <= int(width) <= 4096):
            _fail(ValueError(f"--frame-size {value!r}: landscape, multiples of 16, from 16 to 4096"))
        sizes[name] = [int(width), int(height)]
    return sizes


def _default_size(value: str) -> list[int]:
    width, _, height = value.lower().partition("x")
    if not (width.isdigit() and height.isdigit()) or int(width) % 8 or int(height) % 8:
        _fail(ValueError(f"--default-size {value!r}: expected WIDTHxHEIGHT in multiples of 8, e.g. 832x1216"))
    return [int(width), int(height)]


def _file_id(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", path.stem)


def _vae_id(catalog: CatalogService, vae: str) -> str:
    """A registered VAE's id, or the id a VAE file gets when it is registered first (its stem)."""
    from daguerre.services.catalog import Format, Kind, NewModel
    from daguerre.services.probing import UnsupportedModel, inspect_vae

    path = Path(vae)
    if not path.exists():
        try:
            return catalog.get(vae, Kind.VAE).id
        except DaguerreError as exc:
            _fail(exc)
    try:
        info = inspect_vae(path)
    except UnsupportedModel as exc:
        _fail(exc)
    model_id = _file_id(path)
    record = catalog.add(
        NewModel(path=path, format=Format(info.format), kind=Kind.VAE, title=path.stem, id=model_id, family="any")
    )
    console.print(f"added vae {record.id} version {record.latest.version}")
    return record.id


# The kinds whose single files may be registered by URL; ControlNets, annotators and video models
# are diffusers folders, which a node reads where they are (a path every node mounts).
URL_KINDS = ("checkpoint", "lora", "embedding", "vae", "upscaler")


@models_app.command("add")
def models_add(
    path: Annotated[
        str,
        typer.Argument(
            help="A diffusers folder or a .safetensors/.ckpt/.pth file, or the URL of a file (s3://bucket/key) "
            "that every node fetches once into its own cache"
        ),
    ],
    title: Annotated[str, typer.Option(help="Display title")],
    kind: Annotated[
        str,
        typer.Option(
            help="What the file is: checkpoint (an image model), lora, controlnet, annotator "
            "(docs/img2img-controlnet-lora.md), upscaler (docs/upscale.md), video (docs/video.md), vae or embedding"
        ),
    ] = "checkpoint",
    model_id: Annotated[str | None, typer.Option("--id", help="Id (default: 7 random letters and digits)")] = None,
    version: Annotated[str | None, typer.Option(help="Version name; the newest added is the latest")] = None,
    default_scale: Annotated[float | None, typer.Option(help="Guidance scale when a request gives none")] = None,
    default_scheduler: Annotated[str | None, typer.Option(help="Scheduler when a request gives none")] = None,
    default_negative_prompt: Annotated[str | None, typer.Option(help="Appended when use_default_neg")] = None,
    karras: Annotated[
        bool, typer.Option("--karras", help="Karras sigmas by default (DPMSolverMultistep, K_EULER, KLMS)")
    ] = False,
    clip_skip: Annotated[
        int | None, typer.Option(min=1, max=12, help="A1111's clip skip by default (2: the penultimate layer)")
    ] = None,
    vae: Annotated[
        str | None,
        typer.Option(help="With a checkpoint: the VAE it uses instead of its own, a registered VAE id or a VAE file"),
    ] = None,
    default_size: Annotated[
        str | None,
        typer.Option(
            help="Image size when a request gives none, e.g. 832x1216 (default: the family's; SDXL 1024x1024)"
        ),
    ] = None,
    cover_img: Annotated[str | None, typer.Option(help="Cover image URL")] = None,
    link: Annotated[str | None, typer.Option(help="Link to the model's page")] = None,
    tags: Annotated[list[str] | None, typer.Option("--tags", help="A tag; repeat for several")] = None,
    civitai_model_id: Annotated[int | None, typer.Option(help="The model's Civitai id")] = None,
    config: Annotated[
        Path | None, typer.Option(help="Config skeleton folder for a single file of a custom architecture")
    ] = None,
    controlnet: Annotated[
        str | None, typer.Option(help="With --kind controlnet: what it follows, canny, depth or openpose")
    ] = None,
    lcm: Annotated[bool, typer.Option("--lcm", help="With --kind lora: an LCM-LoRA, used by lcm=true")] = False,
    frame_size: Annotated[
        list[str] | None,
        typer.Option(
            "--frame-size",
            help="With --kind video: the size a resolution renders at for this model, e.g. 480p=640x368 "
            "(landscape; multiples of 16; default 832x480 and 1280x720); repeat for 720p",
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Register a model from local files or a URL (an SD 1.5 or SDXL image checkpoint by default); loaded offline."""
    from daguerre.engine.loading.model_files import ModelFileError, ModelFiles, is_url
    from daguerre.engine.pipelines.schedulers import SCHEDULER_NAMES
    from daguerre.protocol.inference import SAMPLER_ALIASES
    from daguerre.services.catalog import Format, Kind, NewModel
    from daguerre.services.probing import UnsupportedModel, inspect_model

    if default_scheduler in SAMPLER_ALIASES:  # an A1111 sampler name: its scheduler, and Karras if it says so
        default_scheduler, named_karras = SAMPLER_ALIASES[default_scheduler]
        karras = karras or named_karras
    if default_scheduler is not None and default_scheduler not in SCHEDULER_NAMES:
        names = [*SCHEDULER_NAMES, *SAMPLER_ALIASES]
        _fail(ValueError(f"--default-scheduler must be one of {', '.join(names)}"))
    if default_scale is not None and not 1 <= default_scale <= 20:
        _fail(ValueError("--default-scale must be from 1 to 20"))
    if (kind == "controlnet") != (controlnet is not None) or controlnet not in (None, "canny", "depth", "openpose"):
        _fail(ValueError("--kind controlnet takes --controlnet canny, depth or openpose (and only it does)"))
    if lcm and kind != "lora":
        _fail(ValueError("--lcm goes with --kind lora"))
    extra_options: dict[str, object] = {"controlnet": controlnet} if controlnet else {"lcm": True} if lcm else {}
    if default_size is not None:
        if kind != "checkpoint":
            _fail(ValueError("--default-size goes with --kind checkpoint"))
        extra_options["default_size"] = _default_size(default_size)
    if (karras or clip_skip is not None or vae is not None) and kind != "checkpoint":
        _fail(ValueError("--karras, --clip-skip and --vae go with --kind checkpoint"))
    if karras:
        extra_options["karras"] = True
    if clip_skip is not None:
        extra_options["clip_skip"] = clip_skip
    if frame_size:
        if kind != "video":
            _fail(ValueError("--frame-size goes with --kind video"))
        extra_options["frame_sizes"] = _frame_sizes(frame_size)
    settings = _settings(data_dir)
    local, sha256 = Path(path), None
    if is_url(path):
        if kind not in URL_KINDS:
            _fail(ValueError(f"--kind {kind} takes a path: only {', '.join(URL_KINDS)} files may be URLs"))
        # Read through this node's cache, as the engine will: the probe sees the file it loads.
        files = ModelFiles(settings.model_files_dir, settings.model_files.max_bytes, settings.fsspec_options)
        with console.status(f"Fetching {path}..."):
            try:
                fetched = files.fetch(path)
            except ModelFileError as exc:
                _fail(exc)
        local, sha256 = fetched.path, fetched.sha256
    elif not local.exists():
        _fail(FileNotFoundError(f"{path} does not exist"))
    with console.status(f"Inspecting {path}..."):
        try:
            info = inspect_model(kind, local)
        except UnsupportedModel as exc:
            _fail(exc)
    if kind == "embedding" and model_id is None:
        model_id = _file_id(local)  # what prompts write, as A1111 names an embedding by its file
    database = _database(settings)
    if vae is not None:
        extra_options["vae"] = _vae_id(database.catalog, vae)
    try:
        record = database.catalog.add(
            NewModel(
                path=local,
                url=path if sha256 else None,
                sha256=sha256,
                format=Format(info.format),
                kind=Kind(kind),
                title=title,
                id=model_id,
                version=version,
                family=info.family,
                config_path=config,
                cover_img=cover_img,
                link=link,
                tags=tags,
                civitai_model_id=civitai_model_id,
                default_scale=default_scale,
                default_scheduler=default_scheduler,
                default_negative_prompt=default_negative_prompt,
                options={**info.options, **extra_options} or None,
            )
        )
    except DaguerreError as exc:
        _fail(exc)
    console.print(
        f"added {kind} {record.id} version {record.latest.version} ({info.format}, {info.family}): {record.title}"
    )


@models_app.command("list")
def models_list(data_dir: DataDir = None) -> None:
    """List the catalog."""
    database = _database(_settings(data_dir))
    table = Table("id", "kind", "title", "versions", "latest path")
    for m in database.catalog.list():
        table.add_row(m.id, m.kind.value, m.title, ", ".join(v.version for v in m.versions), m.latest.path)
    console.print(table)


@models_app.command("remove")
def models_remove(model_id: Annotated[str, typer.Argument(help="Model id")], data_dir: DataDir = None) -> None:
    """Remove a model from the catalog (its files stay where they are)."""
    database = _database(_settings(data_dir))
    try:
        database.catalog.remove(model_id)
    except DaguerreError as exc:
        _fail(exc)
    console.print(f"removed {model_id}")
