"""How many tasks a worker claims at once: about half a minute of work, by its own measure."""

from __future__ import annotations

from kubemr.shim.worker import claim_cap


def test_claims_hold_about_half_a_minute_of_work() -> None:
    assert claim_cap(None, 64) == 1  # nothing known yet: one task
    assert claim_cap(0.001, 64) == 64  # short tasks: as many as allowed
    assert claim_cap(1.0, 64) == 30
    assert claim_cap(600.0, 64) == 1  # long tasks: one at a time
    assert claim_cap(0.0, 8) == 8
