"""Shared pytest setup: make the repository root importable (``lib_vpred``) however pytest is started."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

#: Test folders that need a real host; with VPRED_REQUIRE_LIVE=1 (set by ``tools/dev.sh test`` once it has started
#: one) a skip there is a failure: a host that could not be reached must never pass as a silent green.
LIVE_FOLDERS = ("tests/webui/", "tests/browser/")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("VPRED_REQUIRE_LIVE") != "1" or not report.skipped:
        return
    if not any(item.nodeid.startswith(folder) for folder in LIVE_FOLDERS):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped although a live host is required (VPRED_REQUIRE_LIVE=1): {reason}"
