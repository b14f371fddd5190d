"""The async path on both event loops, for the contract modules that reach loop-sensitive
code (issue 16 item 0: uvloop's transports are not ``asyncio.Transport`` subclasses).

Import the fixture into such a module; it replaces conftest's ``path_id`` there::

    from tests.contract._loops import path_id_on_both_loops  # noqa: F401 - fixture

Only these modules run ``async-uvloop`` (CI budget: not the whole suite twice).
"""

from __future__ import annotations

import pytest

from tests.servers import uvloop_path_ids


@pytest.fixture(scope="module", params=uvloop_path_ids(), name="path_id")
def path_id_on_both_loops(request: pytest.FixtureRequest) -> str:
    """Each contract test runs once per serving path, the async one also on uvloop."""
    return str(request.param)
