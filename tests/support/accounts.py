"""Concurrent spending against one account, for the ledger's race tests on each database."""

from __future__ import annotations

import threading

from daguerre.errors import InsufficientCredits
from daguerre.services.accounts import AccountService, to_milli


def charge_concurrently(accounts: AccountService, token_id: int, attempts: int) -> list[bool]:
    """Charge one credit from `attempts` threads at once; whether each charge went through."""
    outcomes: list[bool] = []
    lock = threading.Lock()

    def spend() -> None:
        try:
            accounts.charge(token_id, to_milli(1), "race")
            ok = True
        except InsufficientCredits:
            ok = False
        with lock:
            outcomes.append(ok)

    threads = [threading.Thread(target=spend) for _ in range(attempts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes
