"""Train the reference models (one command, CPU, one thread, fixed seeds): ``python bench/reference_model/train.py``.

- ``vpred_ztsnr``: v-prediction (paper Eq. 11, loss weight 1) on the SD scaled-linear schedule rescaled to zero terminal
  SNR, exactly the table the extension installs (``lib_vpred.schedule.ztsnr_alphas_cumprod``, last alpha-bar 4.9e-8);
- ``eps_stock``: its eps-prediction twin on the stock SD schedule (``scaled_linear_alphas_cumprod``), trained the same
  way (same data stream, seeds, network, optimiser).

Both are class-conditional on the exposure class (data.py) with label dropout (15 % of rows get ``NULL_LABEL``), so
classifier-free guidance works. Timesteps uniform in {0..999}. AdamW, warm-up then cosine decay, EMA of the weights
(what is saved). Writes ``weights/<name>.safetensors`` (EMA weights, float32, metadata: parameterization, schedule,
steps, seed, width) and ``weights/<name>_loss.csv`` (mean training loss per 100 steps).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))  # repository root, for lib_vpred

import data  # noqa: E402
from net import NULL_LABEL, TinyUNet  # noqa: E402

from lib_vpred.schedule import scaled_linear_alphas_cumprod, ztsnr_alphas_cumprod  # noqa: E402

WEIGHTS = HERE / "weights"
MODELS = {
    # name: (parameterization, schedule)
    "vpred_ztsnr": ("v", "ztsnr"),
    "eps_stock": ("eps", "stock"),
}
BANK = 60_000
P_UNCOND = 0.15
EMA = 0.999
WARMUP = 200


def alphas_cumprod_for(schedule: str) -> torch.Tensor:
    """float32, as the WebUI holds ``model.alphas_cumprod`` (the extension installs the ZTSNR table in float32)."""
    stock = scaled_linear_alphas_cumprod()
    return ztsnr_alphas_cumprod(stock) if schedule == "ztsnr" else stock.to(torch.float32)


def train(name: str, steps: int, batch: int, lr: float, seed: int, width: int, log_every: int = 100) -> dict:
    param, schedule = MODELS[name]
    abar = alphas_cumprod_for(schedule).to(torch.float64)
    torch.manual_seed(seed)
    net = TinyUNet(width)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    bank = data.base_patches(BANK, "train", seed)
    gen = torch.Generator().manual_seed(seed + 1)
    rows, acc, n_acc, t0 = [], 0.0, 0, time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(BANK, (batch,), generator=gen)
        labels = torch.randint(len(data.EXPOSURE), (batch,), generator=gen)
        x0 = data.expose(data.flip(bank[idx], gen), labels, gen)
        cond = torch.where(torch.rand(batch, generator=gen) < P_UNCOND, torch.full_like(labels, NULL_LABEL), labels)
        t = torch.randint(abar.shape[0], (batch,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].float().view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        target = a.sqrt() * eps - (1 - a).sqrt() * x0 if param == "v" else eps
        loss = (net(x_t, t.float(), cond) - target).pow(2).mean()
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / WARMUP) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(EMA, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        acc, n_acc = acc + float(loss.detach()), n_acc + 1
        if step % log_every == 0 or step == steps:
            rows.append({"step": step, "loss": acc / n_acc, "seconds": round(time.time() - t0, 1)})
            print(f"{name} step {step:6d}  loss {acc / n_acc:.4f}  {time.time() - t0:7.1f} s", flush=True)
            acc, n_acc = 0.0, 0
    meta = {
        "parameterization": param,
        "schedule": schedule,
        "steps": str(steps),
        "batch": str(batch),
        "lr": str(lr),
        "seed": str(seed),
        "width": str(width),
        "seconds": f"{time.time() - t0:.0f}",
        "final_loss": f"{rows[-1]['loss']:.5f}",
    }
    return {"state": ema.state_dict(), "meta": meta, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        res = train(name, args.steps, args.batch, args.lr, args.seed, args.width)
        state = {k: v.contiguous() for k, v in res["state"].items()}
        save_file(state, str(args.out / f"{name}.safetensors"), metadata=res["meta"])
        with open(args.out / f"{name}_loss.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "loss", "seconds"])
            w.writeheader()
            w.writerows(res["rows"])
        print(json.dumps({name: res["meta"]}), flush=True)


if __name__ == "__main__":
    main()
