"""Smoke tests for the benchmarks in ``bench/``: each ``--quick`` mode runs and prints its table. No timing asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_overhead_quick_runs_and_prints_its_table():
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_overhead.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,  # < 20 s on an idle 2-core box; generous for a busy CI runner
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    out = run.stdout
    assert "(quick: not representative)" in out
    assert out.count("wrapper check: ok") == 4  # SD1.5-like and SDXL-like, fp32 and fp16: the wrapper really rescaled
    for label in (
        "(a) rescale maths",
        "(b) WebUI combine_denoised (plain",
        "(b) EXTRA per step",
        "(c) ztsnr_sigma_table",
        "(c) install_sigma_table",
        "(c) decide",
        "(c) TrailingSchedule(steps)",
        "(c) detect_file, cached",
        "(c) detect_file, uncached",
        "UNet forward: median",
        "extension extra per step",
    ):
        assert label in out, label
