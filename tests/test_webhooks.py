"""Job webhooks: the URL check before any charge, Standard Webhooks signatures verified by the
specification's own package, retries with backoff, attempts recorded, deliveries that outlive a
restart, the per-token secret on the CLI, and the migration that gives old tokens one.

Receivers listen on 127.0.0.1, allowed the way an operator allows their own receivers; names other
than 127.0.0.1 resolve through a stand-in resolver, so no test leaves loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, update
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from typer.testing import CliRunner

from daguerre.app import create_app
from daguerre.cli import app as cli_app
from daguerre.db.database import alembic_config, make_engine, migrate, session_factory
from daguerre.db.tables import Base, Inference, Token, WebhookDelivery
from daguerre.errors import InvalidParameter
from daguerre.services.accounts import AccountService
from daguerre.services.container import Services, open_database
from daguerre.services.webhooks import WebhookService
from daguerre.settings import Settings, WebhookSettings
from tests.support.api import RecordingEngine
from tests.support.webhooks import Receiver, webhook_receiver

BODY = {"error_code": 0, "inf_id": "job1", "status": "done", "images": ["http://testserver/files/a.png"]}
# Backoff small enough for a test: about 0.05 s between attempts.
FAST = {"initial_backoff_s": 0.05, "backoff_factor": 1.0, "max_backoff_s": 0.05, "timeout_s": 2.0}


def stand_in(names: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        if host in names:
            return names[host]
        with contextlib.suppress(ValueError):
            return [str(ipaddress.ip_address(host))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    return resolve


class World:
    """A database with one token, and webhook services on it (each one a server process's)."""

    def __init__(self, tmp_path: Path, database_url: str | None = None) -> None:
        database = open_database(Settings(data_dir=tmp_path, database_url=database_url))
        self.sessions = database.sessions
        self.accounts = AccountService(self.sessions)
        self.token, info = self.accounts.create_token(name="hooks", credits=10)
        self.token_id = info.id
        self.secret = self.accounts.webhook_secret(info.id)

    def service(self, names: dict[str, list[str]] | None = None, **settings: Any) -> WebhookService:
        options = {"allow_private_hosts": ["127.0.0.1"], **FAST, **settings}
        return WebhookService(WebhookSettings(**options), self.sessions, stand_in(names or {}))


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 20))


async def attempts_settled(service: WebhookService, inf_id: str, count: int, timeout_s: float = 10.0) -> list[Any]:
    """The job's attempts once `count` are recorded (the receiver answers before the record is written)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        attempts = await asyncio.to_thread(service.attempts, inf_id)
        if len(attempts) >= count:
            return attempts
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} attempts of {inf_id} were not recorded within {timeout_s} s")


async def calls(receiver: Receiver, count: int) -> list[Any]:
    return await asyncio.to_thread(receiver.wait_for, count)


def verified(secret: str, call: Any) -> Any:
    return Webhook(secret).verify(call.body, call.headers)


# -- delivery ------------------------------------------------------------------------------------


def test_a_delivery_is_signed_per_standard_webhooks(world: World) -> None:
    async def scenario() -> None:
        service = world.service()
        with webhook_receiver() as receiver:
            await service.start()
            await service.job_ended(world.token_id, "job1", BODY, url=receiver.url)
            (call,) = await calls(receiver, 1)
            (attempt,) = await attempts_settled(service, "job1", 1)
            await service.close()
        assert verified(world.secret, call) == BODY
        assert call.path == "/hook" and call.headers["content-type"] == "application/json"
        assert call.headers["webhook-id"].startswith("msg_")
        assert abs(int(call.headers["webhook-timestamp"]) - time.time()) < 30
        assert attempt["attempt"] == 1 and attempt["status_code"] == 200 and attempt["delivered"] is True
        assert attempt["error"] is None and attempt["next_at"] is None and attempt["at"].endswith("+00:00")
        # Another token's secret, or a changed body, does not verify.
        other = AccountService(world.sessions).create_token()[1].id
        with pytest.raises(WebhookVerificationError, match="No matching signature"):
            Webhook(world.accounts.webhook_secret(other)).verify(call.body, call.headers)
        with pytest.raises(WebhookVerificationError, match="No matching signature"):
            Webhook(world.secret).verify(call.body.replace(b"done", b"fail"), call.headers)

    run(scenario())


def test_retries_after_the_receiver_answers_500_until_it_takes_it(world: World) -> None:
    async def scenario() -> None:
        service = world.service()
        with webhook_receiver([500, 500, 200]) as receiver:
            await service.start()
            await service.job_ended(world.token_id, "job1", BODY, url=receiver.url)
            got = await calls(receiver, 3)
            attempts = await attempts_settled(service, "job1", 3)
            await asyncio.sleep(0.3)  # time for a wrong fourth attempt
            await service.close()
        assert len(receiver.calls) == 3
        assert len({call.headers["webhook-id"] for call in got}) == 1  # one id across retries
        assert all(verified(world.secret, call) == BODY for call in got)
        assert [(a["status_code"], a["error"], a["delivered"]) for a in attempts] == [
            (500, "HTTP 500", False),
            (500, "HTTP 500", False),
            (200, None, True),
        ]
        assert attempts[0]["next_at"] is not None and attempts[2]["next_at"] is None
        gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(got)]
        assert all(gap >= 0.04 for gap in gaps), gaps  # 0.05 s, jittered by at most 20%

    run(scenario())


def test_exhausted_attempts_are_recorded_as_failed(world: World) -> None:
    async def scenario() -> None:
        service = world.service(max_attempts=3)
        with webhook_receiver([503]) as receiver:
            await service.start()
            await service.job_ended(world.token_id, "job1", BODY, url=receiver.url)
            await calls(receiver, 3)
            attempts = await attempts_settled(service, "job1", 3)
            await asyncio.sleep(0.3)
            await service.close()
        assert len(receiver.calls) == 3
        assert [a["attempt"] for a in attempts] == [1, 2, 3] and not any(a["delivered"] for a in attempts)
        assert attempts[-1]["next_at"] is None and attempts[-1]["status_code"] == 503
        with world.sessions() as session:
            delivery = session.scalars(select(WebhookDelivery)).one()
            assert (delivery.attempts, delivery.next_at, delivery.delivered_at) == (3, None, None)

    run(scenario())


def test_no_answer_and_redirects_are_failed_attempts(world: World) -> None:
    async def scenario() -> None:
        service = world.service(max_attempts=1)
        with webhook_receiver([302]) as receiver:
            await service.start()
            await service.job_ended(world.token_id, "moved", BODY, url=receiver.url)
            (moved,) = await attempts_settled(service, "moved", 1)
        # The receiver is gone: nothing listens on its port any more.
        await service.job_ended(world.token_id, "gone", BODY, url=receiver.url)
        (gone,) = await attempts_settled(service, "gone", 1)
        await service.close()
        assert moved["status_code"] == 302 and "redirects are not followed" in moved["error"]
        assert gone["status_code"] is None and "ConnectError" in gone["error"] and not gone["delivered"]

    run(scenario())


def test_the_connection_goes_to_the_checked_address_with_the_original_host(world: World) -> None:
    async def scenario() -> None:
        names = {"hooks.operator.internal": ["127.0.0.1"]}
        service = world.service(names, allow_private_hosts=["hooks.operator.internal"])
        with webhook_receiver() as receiver:
            port = receiver.url.split(":")[2].split("/")[0]
            url = f"http://hooks.operator.internal:{port}/hook"
            service.check_url(url)
            await service.start()
            await service.job_ended(world.token_id, "job1", BODY, url=url)
            (call,) = await calls(receiver, 1)
            await attempts_settled(service, "job1", 1)
            await service.close()
        assert call.headers["host"] == f"hooks.operator.internal:{port}"
        assert verified(world.secret, call) == BODY

    run(scenario())


def test_the_address_is_checked_again_at_delivery(world: World) -> None:
    async def scenario() -> None:
        names = {"hooks.example": ["93.184.216.34"]}
        service = world.service(names, allow_private_hosts=[], max_attempts=1)
        service.check_url("https://hooks.example/in")  # public when the request came
        names["hooks.example"] = ["10.0.0.7"]  # rebound to the inside by delivery time
        await service.start()
        await service.job_ended(world.token_id, "job1", BODY, url="https://hooks.example/in")
        (attempt,) = await attempts_settled(service, "job1", 1)
        await service.close()
        assert attempt["status_code"] is None and attempt["error"].startswith("refused: ")
        assert "10.0.0.7" in attempt["error"] and not attempt["delivered"]

    run(scenario())


def test_pending_deliveries_are_sent_after_a_restart(world: World) -> None:
    async def scenario() -> None:
        with webhook_receiver([500, 200]) as receiver:
            # One process makes one attempt (answered 500) and stops before the retry; another
            # records a delivery and stops before sending anything.
            second = world.service(initial_backoff_s=0.3, max_backoff_s=0.3)
            await second.job_ended(world.token_id, "job2", {**BODY, "inf_id": "job2"}, url=receiver.url)
            await second.start()
            await attempts_settled(second, "job2", 1)
            await second.close()
            first = world.service()
            await first.job_ended(world.token_id, "never-sent", BODY, url=receiver.url)
            assert len(receiver.calls) == 1
            # The next process sends both: the first at once, the second's retry when it is due.
            third = world.service()
            await third.start()
            got = await calls(receiver, 3)
            retried = await attempts_settled(third, "job2", 2)
            sent = await attempts_settled(third, "never-sent", 1)
            await third.close()
        ids = {json.loads(call.body)["inf_id"]: call.headers["webhook-id"] for call in got}
        assert sorted(ids) == ["job1", "job2"] and got[0].headers["webhook-id"] == ids["job2"]
        assert [a["status_code"] for a in retried] == [500, 200] and sent[0]["delivered"]

    run(scenario())


def test_the_url_comes_from_the_jobs_record_and_a_job_is_delivered_once(world: World) -> None:
    async def scenario() -> None:
        with webhook_receiver() as receiver:
            with world.sessions.begin() as session:
                for inf_id, request in (("hooked", {"webhook_url": receiver.url}), ("plain", {})):
                    session.execute(
                        insert(Inference).values(
                            id=inf_id, token_id=world.token_id, kind="image", status="done",
                            params={"schema": 2, "request": request, "resolved": {}},
                        )
                    )  # fmt: skip
            service = world.service()
            await service.start()
            await service.job_ended(world.token_id, "hooked", BODY)
            await service.job_ended(world.token_id, "hooked", BODY)  # a second report of the same job
            await service.job_ended(world.token_id, "plain", BODY)  # asked for no webhook
            await calls(receiver, 1)
            await attempts_settled(service, "hooked", 1)
            await asyncio.sleep(0.3)
            await service.close()
        assert len(receiver.calls) == 1 and service.attempts("plain") == []
        with world.sessions() as session:
            assert session.scalars(select(WebhookDelivery.inf_id)).all() == ["hooked"]

    run(scenario())


def test_job_ended_never_raises(world: World) -> None:
    async def scenario() -> None:
        service = world.service()
        started = time.monotonic()
        # An unknown token breaks the foreign key: logged, not raised into the job's lifecycle.
        await service.job_ended(99_999, "job1", BODY, url="http://127.0.0.1:9/hook")
        assert time.monotonic() - started < 2 and service.attempts("job1") == []

    run(scenario())


def test_a_failure_inside_the_server_is_a_failed_attempt_too(world: World) -> None:
    with world.sessions.begin() as session:  # a secret the signing library refuses
        session.execute(update(Token).where(Token.id == world.token_id).values(webhook_secret="whsec_"))

    async def scenario() -> None:
        service = world.service(max_attempts=2)
        with webhook_receiver() as receiver:
            await service.start()
            await service.job_ended(world.token_id, "job1", BODY, url=receiver.url)
            attempts = await attempts_settled(service, "job1", 2)
            await asyncio.sleep(0.3)
            await service.close()
        assert receiver.calls == [] and len(service.attempts("job1")) == 2
        assert [a["error"] for a in attempts] == ["internal error (EmptyWebhookSecretError)"] * 2

    run(scenario())


def test_two_gateways_on_one_database_make_each_attempt_once(world: World) -> None:
    async def scenario() -> None:
        with webhook_receiver() as receiver:
            # A roomy time limit: on a loaded machine an attempt timed out is retried, which is not the point here.
            first, second = world.service(timeout_s=10.0), world.service(timeout_s=10.0)
            for n in range(12):
                await first.job_ended(world.token_id, f"job{n}", {**BODY, "inf_id": f"job{n}"}, url=receiver.url)
            await asyncio.gather(first.start(), second.start())
            got = await calls(receiver, 12)
            for n in range(12):
                await attempts_settled(first, f"job{n}", 1)
            await asyncio.sleep(0.3)  # time for a second gateway's duplicate, were there one
            await asyncio.gather(first.close(), second.close())
        assert len(receiver.calls) == 12 and len({call.headers["webhook-id"] for call in got}) == 12
        assert all(len(first.attempts(f"job{n}")) == 1 for n in range(12))

    run(scenario())


def test_close_returns_while_an_attempt_is_ending(world: World) -> None:
    """close() cancels the loop and the attempts together; an attempt that ends then wakes the loop
    as its cancel lands, which must not swallow the cancel (Python 3.11's wait_for did, 1 in ~40)."""

    async def scenario() -> None:
        with webhook_receiver() as receiver:
            for round_ in range(40):
                service = world.service()
                await service.start()
                await service.job_ended(world.token_id, f"job{round_}", BODY, url=receiver.url)
                await calls(receiver, round_ + 1)
                await asyncio.sleep((round_ % 8) * 0.002)  # land the close at different points of the attempt
                async with asyncio.timeout(3):
                    await service.close()

    run(scenario())


def test_the_server_starts_and_stops_the_delivery_loop(tmp_path: Path) -> None:
    """The app's lifespan runs the service; the jobs API reaches it as app.state.services.webhooks."""
    settings = Settings(data_dir=tmp_path, webhooks=WebhookSettings(allow_private_hosts=["127.0.0.1"]))
    with webhook_receiver() as receiver, TestClient(create_app(settings, engine=RecordingEngine())) as client:
        services: Services = client.app.state.services  # type: ignore[attr-defined]
        token_id = services.accounts.create_token()[1].id
        client.portal.call(services.webhooks.job_ended, token_id, "job1", BODY, receiver.url)  # type: ignore[union-attr]
        (call,) = receiver.wait_for(1)
        assert verified(services.accounts.webhook_secret(token_id), call) == BODY


def test_the_readme_recipe_verifies_a_delivery(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("### Webhooks") :]
    recipe = section[section.index("```python\n") + 10 : section.index("```\n", section.index("```python"))]
    namespace: dict[str, Any] = {}
    monkeypatch.setenv("DAGUERRE_WEBHOOK_SECRET", world.secret)
    exec(recipe, namespace)

    async def scenario() -> None:
        service = world.service()
        with webhook_receiver() as receiver:
            await service.start()
            await service.job_ended(world.token_id, "job1", BODY, url=receiver.url)
            (call,) = await calls(receiver, 1)
            await service.close()
        receive = namespace["receive"]
        assert receive(call.body, call.headers) == 204 and receive(call.body, call.headers) == 204
        assert namespace["seen"] == {call.headers["webhook-id"]}
        assert receive(call.body.replace(b"done", b"fail"), call.headers) == 401

    run(scenario())


# -- the URL check -------------------------------------------------------------------------------


def refusal(service: WebhookService, url: str) -> str:
    with pytest.raises(InvalidParameter) as info:
        service.check_url(url)
    assert info.value.field == "webhook_url" and info.value.message.startswith("invalid webhook_url ")
    return info.value.message


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "[::1]",
     "[fc00::1]", "[::ffff:127.0.0.1]"],
)  # fmt: skip
def test_private_addresses_are_refused(world: World, host: str) -> None:
    service = world.service(allow_private_hosts=[])
    assert "webhooks are sent only to public addresses" in refusal(service, f"http://{host}/hook")


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "file:///etc/passwd", "javascript:alert(1)", "/hook", "hooks.example/in"]
)
def test_only_absolute_http_and_https_urls(world: World, url: str) -> None:
    assert "must be an absolute http or https URL" in refusal(world.service(), url)


def test_names_must_resolve_and_every_address_be_public(world: World) -> None:
    service = world.service({"mixed.example": ["93.184.216.34", "10.0.0.7"], "hooks.example": ["93.184.216.34"]})
    assert "cannot resolve nowhere.example (Name or service not known)" in refusal(service, "https://nowhere.example/")
    assert "mixed.example is at 10.0.0.7" in refusal(service, "https://mixed.example/hook")
    service.check_url("https://hooks.example/hook")


def test_long_urls_are_refused_without_being_echoed(world: World) -> None:
    url = "https://hooks.example/" + "a" * 3000
    message = refusal(world.service(), url)
    assert "must be at most 2048 characters" in message and "(3022 characters)" in message and len(message) < 300


def test_the_operator_allows_listed_private_hosts(world: World) -> None:
    names = {"receiver.internal": ["10.0.0.5"], "other.internal": ["10.9.0.1"], "lab.internal": ["192.168.7.7"]}
    service = world.service(names, allow_private_hosts=["receiver.internal", "127.0.0.1", "192.168.0.0/16"])
    for allowed in ("http://receiver.internal/hook", "http://127.0.0.1:8080/hook", "http://lab.internal/hook"):
        service.check_url(allowed)
    for refused in ("http://other.internal/hook", "http://127.0.0.2/hook", "http://10.0.0.5/hook"):
        assert "only to public addresses" in refusal(service, refused)


# -- the secret ----------------------------------------------------------------------------------


runner = CliRunner()


def cli(data_dir: Path, *args: str) -> list[str]:
    result = runner.invoke(cli_app, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()


def test_tokens_create_prints_the_secret_and_webhook_secret_rotates_it(tmp_path: Path) -> None:
    lines = cli(tmp_path, "tokens", "create", "--credits", "1")
    token, secret = lines[-1], lines[-2].removeprefix("webhook secret: ")
    assert lines[-2].startswith("webhook secret: whsec_") and len(token) == 64
    accounts = open_database(Settings(data_dir=tmp_path)).accounts
    info = accounts.authenticate(token)
    assert accounts.webhook_secret(info.id) == secret
    Webhook(secret)  # the form the specification's libraries take
    rotated = cli(tmp_path, "tokens", "webhook-secret", token[:8])[-1]
    assert rotated.startswith("whsec_") and rotated != secret and accounts.webhook_secret(info.id) == rotated
    failed = runner.invoke(cli_app, ["tokens", "webhook-secret", "nosuchtoken", "--data-dir", str(tmp_path)])
    assert failed.exit_code == 1 and "no token matches" in failed.output


def _old_tokens_migrated(url: str) -> None:
    """Three tokens and a grant written at revision 0002, before webhooks, then the upgrade."""
    command.upgrade(alembic_config(url), "0002")
    engine = make_engine(url)
    with engine.begin() as connection:
        for n in range(3):
            connection.exec_driver_sql(
                "INSERT INTO tokens (name, token_hash, prefix, balance, created_at) "
                f"VALUES ('t{n}', '{n:064d}', '{n:08d}', 1000, '2026-01-01 00:00:00')"
            )
        connection.exec_driver_sql(
            "INSERT INTO ledger (token_id, kind, delta, reference, note, created_at) "
            "VALUES (1, 'grant', 1000, '', '', '2026-01-01 00:00:00')"
        )
    migrate(url)
    with session_factory(engine)() as session:
        secrets = session.scalars(select(Token.webhook_secret)).all()
        assert len(set(secrets)) == 3 and all(s.startswith("whsec_") for s in secrets)
        assert [Webhook(s) for s in secrets]
        assert AccountService(session_factory(engine)).ledger(1)[0].credits == 1  # the table kept its rows
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()


def test_the_migration_gives_every_existing_token_its_own_secret(tmp_path: Path) -> None:
    _old_tokens_migrated(f"sqlite:///{tmp_path / 'old.db'}")


def test_migration_and_retried_delivery_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    _old_tokens_migrated(postgres_url)
    world = World(tmp_path, postgres_url)

    async def scenario() -> None:
        service = world.service()
        with webhook_receiver([500, 200]) as receiver:
            await service.start()
            await service.job_ended(world.token_id, "pg-job", BODY, url=receiver.url)
            got = await calls(receiver, 2)
            attempts = await attempts_settled(service, "pg-job", 2)
            await service.close()
        assert all(verified(world.secret, call) == BODY for call in got)
        assert [a["status_code"] for a in attempts] == [500, 200] and attempts[0]["next_at"] > attempts[0]["at"]

    run(scenario())
