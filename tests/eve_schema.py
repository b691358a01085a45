"""Suricata's published EVE schema (../shared/schemas/, see its README), for the tests that
check every EVE line ipsctl writes.

ipsctl's own parts are left out of the check, as the README says: the top-level `ipsctl`
object and the `ipsctl_*` event objects (ipsctl_log, ipsctl_block, ...) are extensions the
schema cannot know. Everything else on a line must validate.

A module of its own, not conftest.py, for the reason tests/captures.py gives.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from functools import cache
from typing import Any

import pytest
from captures import PCAPS

SCHEMA = PCAPS.parent / "schemas" / "suricata-eve-schema.json"


@cache
def eve_validator() -> Any:
    """The schema's validator; skips the test where the schema or jsonschema is missing,
    except under CI, where that is a failure (the shared folder and the dev extras are part
    of the machine)."""
    if not SCHEMA.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"Suricata's EVE schema not found at {SCHEMA}")
        pytest.skip(f"Suricata's EVE schema not found at {SCHEMA}")
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def suricata_part(record: dict[str, Any]) -> dict[str, Any]:
    """The line without ipsctl's own extension objects."""
    return {k: v for k, v in record.items() if not k.startswith("ipsctl")}


def eve_errors(record: dict[str, Any]) -> list[str]:
    """What the schema says is wrong with one line (empty: it validates)."""
    found = eve_validator().iter_errors(suricata_part(record))
    return sorted(f"{'/'.join(map(str, e.path))}: {e.message}" for e in found)


def assert_valid_eve(records: Iterable[dict[str, Any]]) -> int:
    """Every line validates; returns how many were checked."""
    count = 0
    for record in records:
        errors = eve_errors(record)
        assert not errors, (record, errors)
        count += 1
    return count
