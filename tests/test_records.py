"""Inference records outlive the code: versioned params, the 0002 migration of old records, and
money that moves with a record's status (charged once, refunded at most once)."""

from __future__ import annotations

import hashlib
import importlib.util
import secrets
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy as sa
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from daguerre.app import create_app
from daguerre.db.database import alembic_config, make_engine, migrate, session_factory
from daguerre.db.tables import Inference
from daguerre.engine.runtime.local import LocalEngine
from daguerre.errors import DaguerreError
from daguerre.services.accounts import AccountService, to_milli
from daguerre.services.catalog import Format, NewModel
from daguerre.services.records import INTERRUPTED, InferenceStore, new_inference_id, unfinished_count
from daguerre.services.storage import Storage
from daguerre.settings import Settings
from tests.support.api import Api

MIGRATION = Path(__file__).parent.parent / "src/daguerre/db/migrations/versions/0002_versioned_params.py"

# What /api/inference stored before 0002: the engine's TextToImageJob as a dict.
# The inferences table as revision 0001 made it (the ORM class describes the newest schema).
OLD_INFERENCES = sa.table(
    "inferences",
    *(sa.column(name) for name in ("id", "token_id", "kind", "status", "model_id", "version", "credit_cost", "error")),
    sa.column("params", sa.JSON),
    sa.column("outputs", sa.JSON),
    sa.column("created_at", sa.DateTime),
)

OLD_IMAGE_PARAMS = {
    "prompt": "a lighthouse",
    "negative_prompt": "fog",
    "width": 128,
    "height": 128,
    "steps": 2,
    "guidance_scale": 6.5,
    "scheduler": "DDIM",
    "seeds": [41, 42],
    "loras": [],
}
SAME_REQUEST = {
    "model_id": "tiny",
    "prompt": "a lighthouse",
    "negative_prompt": "fog",
    "use_default_neg": "false",
    "width": 128,
    "height": 128,
    "steps": 2,
    "scale": 6.5,
    "scheduler": "DDIM",
    "seed": 41,
    "num_images": 2,
}


def _token_at_0001(sessions: sessionmaker[Session], credits: float = 0) -> tuple[str, int]:
    """A token as revision 0001's tokens table holds it (AccountService writes the columns that
    later revisions added): the token and its id."""
    token = secrets.token_hex(32)
    columns = ("name", "token_hash", "prefix", "balance", "created_at")
    tokens = sa.table("tokens", sa.column("id", sa.Integer), *(sa.column(name) for name in columns))
    values = ("old", hashlib.sha256(token.encode()).hexdigest(), token[:8], to_milli(credits), sa.func.now())
    with sessions.begin() as session:
        token_id = session.execute(
            sa.insert(tokens).values(dict(zip(columns, values, strict=True))).returning(tokens.c.id)
        ).scalar_one()
    return token, token_id


def _migration() -> ModuleType:
    spec = importlib.util.spec_from_file_location("migration_0002", MIGRATION)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_old_record_is_hires_fixed_after_the_migration(tmp_path: Path, engine: LocalEngine, tiny_sd15: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    url = settings.resolved_database_url
    settings.data_dir.mkdir()
    command.upgrade(alembic_config(url), "0001")  # the schema as the old code left it
    old_engine = make_engine(url)
    sessions = session_factory(old_engine)
    token, token_id = _token_at_0001(sessions, credits=100)
    old_id = new_inference_id()
    with sessions.begin() as session:
        old_row = {"token_id": token_id, "kind": "image", "status": "done", "model_id": "tiny", "credit_cost": 100}
        old_row |= {"error": "", "created_at": datetime.now(UTC)}
        outputs = ["images/old-0.png", "images/old-1.png"]
        session.execute(
            OLD_INFERENCES.insert().values(id=old_id, version="1", params=OLD_IMAGE_PARAMS, outputs=outputs, **old_row)
        )
    old_engine.dispose()

    with TestClient(create_app(settings, engine=engine), base_url="http://testserver") as client:  # migrates
        api = Api(client, token)
        # Registered after the upgrade: the catalog's ORM class describes the newest schema.
        api.services.catalog.add(NewModel(path=tiny_sd15, format=Format.DIFFUSERS, id="tiny", title="Tiny"))
        record = api.services.inference.inferences.get(old_id, token_id)
        assert record.params["schema"] == 2
        assert record.request["prompt"] == "a lighthouse" and record.request["use_default_neg"] is False
        assert record.resolved["seeds"] == [41, 42] and record.resolved["scale"] == 6.5
        # The same render made fresh gives the old record's images; store them under its keys.
        fresh = api.infer(**SAME_REQUEST)
        assert fresh["seeds"] == [41, 42]
        storage = Storage(settings.resolved_storage_url)
        for index, url_ in enumerate(fresh["images"]):
            storage.put(f"images/old-{index}.png", api.fetch(url_))

        old_fix = api.post(
            "/api/upscale", inf_id=old_id, url="http://testserver/files/images/old-1.png", type="hires_fix"
        )
        assert old_fix["error_code"] == 0, old_fix
        assert (old_fix["width"], old_fix["height"]) == (256, 256)
        fresh_fix = api.post("/api/upscale", inf_id=fresh["inf_id"], url=fresh["images"][1], type="hires_fix")
        # The old record re-renders exactly as a fresh one of the same request does.
        assert api.fetch(old_fix["output"]) == api.fetch(fresh_fix["output"])
        assert api.services.inference.inferences.get(old_fix["inf_id"], token_id).resolved["seed"] == 42


def test_fresh_records_are_versioned_documents(recorded_api: Api) -> None:
    body = recorded_api.infer(negative_prompt="rain", seed=5, num_images=2)
    owner = recorded_api.services.accounts.authenticate(recorded_api.token)
    record = recorded_api.services.inference.inferences.get(body["inf_id"], owner.id)
    assert record.params["schema"] == 2
    assert "access_token" not in record.request
    assert record.request["prompt"] == "a cat" and record.request["seed"] == 5
    resolved = record.resolved
    assert resolved["seeds"] == [5, 6] and resolved["steps"] == 2 and resolved["loras"] == []
    assert resolved["negative_prompt"].startswith("rain, ")  # the server's default was appended


def test_the_migration_converts_every_kind() -> None:
    convert = _migration().convert
    controlnet = {
        **OLD_IMAGE_PARAMS,
        "loras": [{"id": "ink", "version": "2", "path": "/m/ink.safetensors", "weight": 0.8}],
        "controlnet": {"id": "cn", "version": "1", "path": "/m/cn", "kind": "depth"},
        "annotator": {"id": "depth", "version": "1", "path": "/m/depth", "kind": "depth"},
        "preprocess": True,
    }
    image = convert("image", "tiny", "1", controlnet)
    assert image["request"]["controlnet"] == "depth" and image["request"]["num_images"] == 2
    assert image["resolved"]["loras"] == [{"id": "ink", "version": "2", "weight": 0.8}]
    assert image["resolved"]["annotator"] == {"id": "depth", "version": "1"}
    lcm = convert("image", "tiny", "1", {**OLD_IMAGE_PARAMS, "scheduler": "LCM"})
    assert lcm["request"]["lcm"] is True and lcm["request"]["scheduler"] is None
    hires = convert(
        "upscale",
        "tiny",
        "1",
        {
            "type": "hires_fix",
            "source_inf_id": "abc",
            "source": "images/a.png",
            "strength": 0.5,
            "seed": 9,
            "upscaler": None,
            "width": 256,
            "height": 256,
        },
    )
    assert hires["request"]["inf_id"] == "abc" and hires["resolved"]["seed"] == 9
    video = convert(
        "video",
        "demo-t2v",
        "1",
        {
            "architecture": "wan",
            "prompt": "p",
            "negative_prompt": "",
            "width": 96,
            "height": 64,
            "num_frames": 5,
            "fps": 16,
            "steps": 2,
            "guidance_scale": 5.0,
            "seed": 3,
            "resolution": "480p",
            "image_url": None,
        },
    )
    assert video["request"]["model_id"] == "demo-t2v" and video["resolved"]["seed"] == 3
    assert convert("image", "tiny", "1", image) is None  # already converted
    assert convert("image", "tiny", "1", {"prompt": "only"})["legacy"] == {"prompt": "only"}


def _migrate_old_rows(url: str, count: int) -> list[dict[str, object]]:
    """Rows written the old way at revision 0001, as they read after upgrading to head."""
    command.upgrade(alembic_config(url), "0001")
    database = make_engine(url)
    sessions = session_factory(database)
    _, token_id = _token_at_0001(sessions)
    row = {"token_id": token_id, "kind": "image", "status": "done", "model_id": "tiny", "version": "1"}
    row |= {"outputs": [], "credit_cost": 0, "error": "", "created_at": datetime.now(UTC)}
    with sessions.begin() as session:
        session.execute(
            OLD_INFERENCES.insert(), [{"id": f"id{i:05d}", **row, "params": OLD_IMAGE_PARAMS} for i in range(count)]
        )
    migrate(url)
    with database.connect() as connection:
        documents = [row.params for row in connection.execute(Inference.__table__.select())]
    database.dispose()
    return documents


def test_the_migration_runs_in_batches(tmp_path: Path) -> None:
    documents = _migrate_old_rows(f"sqlite:///{tmp_path / 'batches.db'}", 1203)  # more than two batches of 500
    assert len(documents) == 1203 and all(d["schema"] == 2 for d in documents)


def test_the_migration_runs_on_postgres(postgres_url: str) -> None:
    documents = _migrate_old_rows(postgres_url, 3)
    assert [d["resolved"]["seeds"] for d in documents] == [[41, 42]] * 3


def _store(tmp_path: Path) -> tuple[InferenceStore, AccountService, int]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    sessions = session_factory(make_engine(url))
    accounts = AccountService(sessions)
    _, info = accounts.create_token(credits=10)
    return InferenceStore(sessions), accounts, info.id


def test_a_failure_refunds_once(tmp_path: Path) -> None:
    store, accounts, token_id = _store(tmp_path)
    store.open("one", token_id, "image", "tiny", "1", {}, to_milli(3))
    assert accounts.balance(token_id) == 7
    assert store.fail("one", "broke") is True
    assert store.fail("one", "broke again") is False
    assert store.recover() == []
    assert accounts.balance(token_id) == 10
    assert [row.kind for row in accounts.ledger(token_id)] == ["grant", "charge", "refund"]
    with pytest.raises(DaguerreError, match="stopped before it could be delivered"):
        store.finish("one", ["images/x.png"])


def test_work_interrupted_twice_is_failed_and_refunded_exactly_once(tmp_path: Path) -> None:
    store, accounts, token_id = _store(tmp_path)
    store.open("running", token_id, "image", "tiny", "1", {}, to_milli(2))
    store.open("done", token_id, "image", "tiny", "1", {}, to_milli(1))
    store.start("done")
    store.finish("done", ["images/d.png"])
    assert store.start("running")
    # The first restart queues it again, to run once more; the second (it started again) gives up.
    assert [record.id for record in store.recover()] == ["running"]
    assert store.get("running", token_id).status == "queued" and accounts.balance(token_id) == 7
    assert store.start("running")
    assert store.recover() == []
    assert store.recover() == []  # a third restart refunds nothing more
    assert accounts.balance(token_id) == 9
    record = store.get("running", token_id)
    assert record.status == "failed" and record.error == INTERRUPTED and record.credit_cost == 0
    refunds = [row for row in accounts.ledger(token_id) if row.kind == "refund"]
    assert [(row.reference, row.credits, row.note) for row in refunds] == [("running", 2, INTERRUPTED)]


def test_a_short_balance_records_nothing(tmp_path: Path) -> None:
    store, accounts, token_id = _store(tmp_path)
    with pytest.raises(DaguerreError, match="not enough credits"):
        store.open("big", token_id, "image", "tiny", "1", {}, to_milli(11))
    with pytest.raises(DaguerreError, match="not found"):
        store.get("big", token_id)
    assert accounts.balance(token_id) == 10


def test_counting_a_token_s_unfinished_jobs_reads_no_history(tmp_path: Path) -> None:
    # Every charge asks it: with only the token_id index it read every job the token ever ran.
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    migrate(url)
    engine = make_engine(url)
    statement = unfinished_count(1).compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as connection:
        plan = connection.execute(sa.text(f"EXPLAIN QUERY PLAN {statement}")).all()
    engine.dispose()
    assert [row[3] for row in plan] == [
        "SEARCH inferences USING COVERING INDEX ix_inferences_token_status (token_id=? AND status=?)"
    ], plan
