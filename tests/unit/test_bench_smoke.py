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
        timeout=300,  # < 30 s on an idle 2-core box; generous for a busy CI runner
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    out = run.stdout
    assert "(quick: not representative)" in out
    # 3 configurations x fp32/fp16 latents, each wrapper (k-diffusion, timestep eps, timestep v) really rescaled
    assert out.count("wrapper checks: ok, ok, ok") == 6
    assert out.count("UNet step: median") == 3
    for label in (
        "WebUI combine_denoised (plain",
        "k-diffusion: EXTRA per step",
        "positive_prediction",
        "rescale_denoised (v space)",
        "timestep, eps ckpt: EXTRA",
        "rescale_eps (v space)",
        "timestep, v ckpt: EXTRA",
        "cfg_rescale (in v)",
        "inactive (eps/disabled)",
        "Kernel-launching aten ops per step",
        "ztsnr_sigma_table",
        "install_sigma_table",
        "decide",
        "TrailingSchedule(steps)",
        "detect_file, cached",
        "detect_file, uncached",
        "script hooks, whole pass",
    ):
        assert label in out, label


def _quick(script: str, *extra: str) -> str:
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--quick", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run.stdout


@pytest.mark.slow
def test_bench_fidelity_quick_runs_and_prints_its_table(tmp_path):
    out = _quick("bench_fidelity.py", "--out", str(tmp_path))
    assert "IDEAL-DENOISER PROXY" in out
    for sampler in ("Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "Heun", "DDIM"):
        assert sampler in out
    assert "vpred: ZTSNR + trailing, Euler 1st step" in out  # Heun as the extension runs it
    assert (tmp_path / "fidelity.csv").exists()


@pytest.mark.slow
def test_bench_detection_quick_runs_and_prints_its_table(tmp_path):
    out = _quick("bench_detection.py", "--tmpdir", str(tmp_path))
    assert "detect_checkpoint" in out
    assert "load_file" in out
    assert list(tmp_path.iterdir()) == []  # its multi-MB file is removed again
