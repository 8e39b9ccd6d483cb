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
        "SpacingSchedule(steps)",
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


@pytest.mark.slow
def test_bench_trained_quick_runs_on_the_committed_weights(tmp_path):
    import csv
    import math

    out = _quick("bench_trained.py", "--out", str(tmp_path))
    assert "TRAINED reference models" in out
    assert "(quick: not representative)" in out
    # the extension's default (Timestep spacing: Auto) is judged per sampler as the plan resolves it
    assert "(default under test: auto)" in out
    assert "DPM++ 2M (exponential)" in out
    assert "Euler (trailing)" in out
    with (tmp_path / "trained.csv").open() as f:
        rows = list(csv.DictReader(f))
    # the data floor, then per sampler: the eps twin at CFG 1 and every schedule of the v model at (1, -), (7.5, 0.7)
    assert rows[0]["model"] == "data"
    grid = rows[1:]
    samplers = ("Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "Heun", "LMS", "DDIM", "UniPC")
    assert {r["sampler"] for r in grid} == set(samplers)
    schedules = {s: 3 if s in ("DDIM", "UniPC") else 6 for s in samplers}
    assert len(grid) == sum(1 + 2 * n for n in schedules.values())
    for s in samplers:
        eps = [r for r in grid if r["sampler"] == s and r["model"] == "eps_stock"]
        assert [(r["schedule"], r["cfg"]) for r in eps] == [("stock", "1.0")]
        v = [r for r in grid if r["sampler"] == s and r["model"] == "vpred_ztsnr"]
        assert len(v) == 2 * schedules[s]
        assert "trailing" in {r["schedule"] for r in v}
    for r in rows:
        for k in ("bstd", "dark", "bright", "low", "mid", "high", "swd"):
            assert math.isfinite(float(r[k])), (r["sampler"], r["schedule"], k)
    for name in ("trained_10steps.png", "trained_samples.png", "trained_loss.png"):
        assert (tmp_path / name).exists()
