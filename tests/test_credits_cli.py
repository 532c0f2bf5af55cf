"""`daguerre credits add`: negative amounts take credits away, never below zero; every bad amount
is a clear message, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from daguerre.cli import app
from daguerre.services.accounts import InvalidAmount
from daguerre.services.container import open_database
from daguerre.settings import Settings

runner = CliRunner()


def token_with(data_dir: Path, credits: float) -> tuple[str, int]:
    database = open_database(Settings(data_dir=data_dir))
    token, info = database.accounts.create_token(name="t", credits=credits)
    database.engine.dispose()
    return token, info.id


def balance(data_dir: Path, token: str) -> float:
    database = open_database(Settings(data_dir=data_dir))
    try:
        return database.accounts.authenticate(token).balance
    finally:
        database.engine.dispose()


def add(data_dir: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["credits", "add", "--data-dir", str(data_dir), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_a_negative_amount_takes_credits_away(tmp_path: Path) -> None:
    token, _ = token_with(tmp_path, 10)
    code, output = add(tmp_path, token, "-5")
    assert code == 0 and "now has 5 credits" in output
    code, _ = add(tmp_path, token[:8], "-2.5")  # by prefix too
    assert code == 0 and balance(tmp_path, token) == 2.5


@pytest.mark.parametrize("separator", [[], ["--"]])
def test_taking_more_than_the_balance_is_refused(tmp_path: Path, separator: list[str]) -> None:
    token, _ = token_with(tmp_path, 1)
    code, output = add(tmp_path, *separator, token, "-5")
    assert code == 1
    assert "cannot take 5 credits away: the balance is 1" in output
    assert balance(tmp_path, token) == 1


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("1e308", "must be a number from -1,000,000,000 to 1,000,000,000"),
        ("-1e308", "must be a number from -1,000,000,000 to 1,000,000,000"),
        ("nan", "not nan"),
        ("inf", "not inf"),
        ("abc", "Invalid value for 'amount'"),
    ],
)
def test_bad_amounts_are_clear_messages(tmp_path: Path, amount: str, message: str) -> None:
    token, _ = token_with(tmp_path, 1)
    code, output = add(tmp_path, token, amount)
    assert code != 0 and message in " ".join(output.split())
    assert "Traceback" not in output
    assert balance(tmp_path, token) == 1


def test_the_account_service_refuses_too_on_its_own(tmp_path: Path) -> None:
    database = open_database(Settings(data_dir=tmp_path))
    _, info = database.accounts.create_token(credits=2)
    with pytest.raises(InvalidAmount):
        database.accounts.add_credits(info.id, -2.001)
    with pytest.raises(InvalidAmount):
        database.accounts.add_credits(info.id, float("nan"))
    assert database.accounts.add_credits(info.id, -2) == 0
    assert [row.credits for row in database.accounts.ledger(info.id)] == [2, -2]
    database.engine.dispose()
