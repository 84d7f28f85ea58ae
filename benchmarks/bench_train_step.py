"""Training step (forward + backward + Adam), patch 64³, batch 2: the project's step vs a plain eager
loop of the same net, and what channels-last, bf16 autocast and torch.compile do to the plain loop.

    python benchmarks/bench_train_step.py [--smoke | --quick] [--device cuda] [--compile]

- **project**: ``cclray.engine_finetune.run_finetune`` under ``LocalContext`` (world size 1, no Ray),
  2 epochs of ``--steps`` steps reading patches from a prepared store (loader in-process); the
  figure is the second epoch's ``steps_per_s`` (the first pays the allocations). Its defaults:
  fp32, ``channels_last`` on. Also reported: the project step with ``cpu_bf16`` (CUDA: ``amp``, on).
- **eager**: what a user would otherwise write: the same ``Synthesizer``, Adam, masked-free L1 on
  random tensors of the same shape, ``zero_grad / backward / step``.
- variants of the eager loop: ``channels_last_3d`` (model and input), ``bf16`` autocast,
  ``torch.compile`` (with ``--compile`` only; default mode; compile time reported apart). On CUDA the autocast variant is fp16
  with a GradScaler, as the engine does.

Variants are timed round-robin (one step each in turn) so load drifts hit them alike.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import _data  # noqa: E402


def eager_step(model, opt, x, y, device, autocast_dtype=None, scaler=None):
    """One plain training step; returns a closure."""
    import torch

    def step():
        with torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            loss = (model(x).float() - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def variants(cfg, patch: int, batch: int, device, compile_: bool) -> dict:
    """{name: step closure} of the plain loop and its variants (each with its own model copy)."""
    import torch

    from cclray.models import build_synthesizer

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, patch, patch, patch, generator=g).to(device)  # (B, C, D, H, W)
    y = torch.randn(batch, cfg.out_channels, patch, patch, patch, generator=g).to(device)
    half = torch.float16 if device.type == "cuda" else torch.bfloat16

    def fresh(memory_format=torch.contiguous_format):
        torch.manual_seed(0)
        m = build_synthesizer(cfg).to(device).to(memory_format=memory_format).train()
        return m, torch.optim.Adam(m.parameters(), lr=1e-3)

    out = {}
    m, o = fresh()
    out["eager fp32"] = eager_step(m, o, x, y, device)
    cl = torch.channels_last_3d
    m, o = fresh(cl)
    out["eager channels_last_3d"] = eager_step(m, o, x.to(memory_format=cl), y, device)
    m, o = fresh()
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    out[f"eager {str(half).split('.')[-1]} autocast"] = eager_step(m, o, x, y, device, half, scaler)
    if compile_:
        m, o = fresh()
        out["torch.compile fp32"] = eager_step(torch.compile(m), o, x, y, device)
    return out


def project_steps_per_s(store: str, cfg, patch: int, batch: int, steps: int, device: str, **over) -> float:
    """Second-epoch steps/s of the project's finetune loop (LocalContext, no validation); ``over``:
    FinetuneConfig overrides."""
    from cclray.config import FinetuneConfig
    from cclray.engine import LocalContext
    from cclray.engine_finetune import run_finetune

    fc = FinetuneConfig.from_dict({
        "store": store, "model": cfg.to_dict(), "val_split": None, "epochs": 2, "steps_per_epoch": steps,
        "checkpoint_every": 10, "patch": {"patch_size": [patch] * 3, "batch_size": batch, "num_workers": 0}, **over})
    ctx = LocalContext(None, device=device)
    run_finetune(fc, ctx)
    return float(ctx.reports[-1]["steps_per_s"])


def main() -> int:
    ap = _common.parser(__doc__)
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile (opt-in: a cold compile cache took 41 s on a 2-core host before "
                         "its first step, past run_all's budget)")
    ap.add_argument("--no-compile", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for scripts
    args = ap.parse_args()
    report = _common.Report("train_step", args)
    if _common.skip_without_cuda(report):
        return report.finish()
    import logging

    import torch

    from cclray.config import ModelConfig

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(_common.cores())
    patch, widths, steps, repeat = _common.pick(args.size, (16, (8, 16, 32), 2, 2), (64, None, 2, 2),
                                                (64, None, 3, 4))
    batch = 2
    compile_ = args.compile and not args.no_compile and args.size != "smoke"
    cfg = ModelConfig(**({"widths": widths} if widths else {}))
    device = torch.device(args.device)
    print(f"widths {cfg.widths}, patch {patch}³, batch {batch}, {torch.get_num_threads()} threads, {device}", flush=True)
    source, n = _common.pick(args.size, ("synthetic", 2), ("phantom", 2), ("phantom", 2))
    store = _data.prepared_store(Path(args.work), n, source=source)

    steps_fns = variants(cfg, patch, batch, device, compile_)
    if compile_:
        t = time.perf_counter()
        steps_fns["torch.compile fp32"]()  # the compile happens on the first call
        report.figure("torch.compile first step (compile + step)", time.perf_counter() - t, "s")
    project = project_steps_per_s(store, cfg, patch, batch, steps, args.device)
    times = _common.interleaved(steps_fns, repeat=repeat, warmup=1)
    project2 = project_steps_per_s(store, cfg, patch, batch, steps, args.device)  # before and after: load drift
    project_s = 2 / (project + project2)
    report.figure("project step (run_finetune, LocalContext)", project_s, "s/step",
                  runs=[round(1 / project, 3), round(1 / project2, 3)])
    if device.type == "cpu":
        bf16_s = 1 / project_steps_per_s(store, cfg, patch, batch, steps, args.device, cpu_bf16=True)
        report.figure("project step, cpu_bf16=true", bf16_s, "s/step")
    med = {k: _common.median(v) for k, v in times.items()}
    for name, t in med.items():
        report.figure(name, t, "s/step", patches_per_s=round(batch / t, 3))
    eager = med["eager fp32"]
    report.ratio("eager fp32 / project step (s/step)", eager / project_s, goal=1.0,
                 note="project = eager + data + grad clip + bookkeeping")
    others = {k: v for k, v in med.items() if k != "eager fp32"}
    best = min(others, key=others.get)
    report.ratio(f"eager fp32 / best other variant ({best})", eager / others[best], goal=1.0)
    if device.type == "cpu":
        report.ratio("eager fp32 / project step with cpu_bf16=true", eager / bf16_s, goal=1.0,
                     note="opt-in: `--set cpu_bf16=true`")
    for name, t in med.items():
        if name != "eager fp32":
            report.figure(f"speed-up of {name} over eager fp32", eager / t, "x")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
