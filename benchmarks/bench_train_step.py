"""Training step (forward + backward + Adam), patch 64³, batch 2: the project's step vs a plain eager
loop of the same net, and what channels-last, bf16 autocast and torch.compile do to the plain loop.

    python benchmarks/bench_train_step.py [--smoke | --quick] [--device cuda] [--compile]

- **project**: ``cclray.engine_finetune.run_finetune`` under ``LocalContext`` (world size 1, no Ray),
  reading patches from a prepared store (loader in-process); the figure is an epoch's ``steps_per_s``
  after the first (which pays the allocations). Its defaults:
  fp32, ``channels_last`` on. Also reported: the project step with ``cpu_bf16`` (CUDA: ``amp``, on).
- **eager**: what a user would otherwise write: the same ``Synthesizer``, Adam, masked-free L1 on
  random tensors of the same shape, ``zero_grad / backward / step``.
- variants of the eager loop: ``channels_last_3d`` (model and input), ``bf16`` autocast,
  ``torch.compile`` (with ``--compile`` only; default mode; compile time reported apart). On CUDA the autocast variant is fp16
  with a GradScaler, as the engine does.

Repetitions (``--repeats``, default 3), round robin: the project's loop runs 1 + N epochs and after each
epoch (outside its timing) every eager variant takes its steps in turn, so repetition i is the project's
epoch i + 1 and the eager steps right after it (the first epoch and the first eager step are warm-up).
The project step with ``cpu_bf16`` runs the same way against the eager fp32 step. Each ratio is min /
median / max over the repetitions.

- ``--quick``: patch 64³, batch 2, the default network; 1 step a project epoch and 1 step of each eager
  variant a round, over a 2-subject phantom store (made once under --work). torch.compile only with
  ``--compile``.
- full (no flag): 3 project steps an epoch, 2 eager steps a round. ``--smoke``: 16³, widths 8-16-32.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

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


def project_rounds(store: str, cfg, patch: int, batch: int, steps: int, device: str, reps: int,
                   between: Callable[[int], object], **over) -> list[float]:
    """steps/s of the project's finetune loop (LocalContext, no validation) in each of its ``reps`` epochs
    after the first (which pays the allocations), ``steps`` steps an epoch; ``between(epoch)`` runs after
    every epoch (the round robin's other variants). ``over``: FinetuneConfig overrides."""
    from cclray.config import FinetuneConfig
    from cclray.engine import LocalContext
    from cclray.engine_finetune import run_finetune

    class Rounds(LocalContext):  # ``report`` is called once an epoch, outside the epoch's timing
        def report(self, metrics, *a, **kw):
            super().report(metrics, *a, **kw)
            between(len(self.reports))

    fc = FinetuneConfig.from_dict({
        "store": store, "model": cfg.to_dict(), "val_split": None, "epochs": 1 + reps, "steps_per_epoch": steps,
        "checkpoint_every": 1000, "patch": {"patch_size": [patch] * 3, "batch_size": batch, "num_workers": 0}, **over})
    ctx = Rounds(None, device=device)
    run_finetune(fc, ctx)
    return [float(r["steps_per_s"]) for r in ctx.reports[1:]]


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
    patch, widths, steps, eager_steps = _common.pick(args.size, (16, (8, 16, 32), 1, 1), (64, None, 1, 1),
                                                     (64, None, 3, 2))
    reps = _common.repeats(args)
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

    def eager_round(fns: dict, into: dict):
        def between(epoch: int):
            if epoch == 1:  # after the project's warm-up epoch: the eager variants' warm-up step
                _common.rounds(fns, 0, warmup=1)
            else:
                for k, v in _common.rounds(fns, eager_steps).items():
                    into.setdefault(k, []).append(_common.median(v))
        return between

    eager: dict[str, list[float]] = {}  # round i: project epoch i + 1, then every eager variant in turn
    project = [1 / r for r in project_rounds(store, cfg, patch, batch, steps, args.device, reps,
                                             eager_round(steps_fns, eager))]
    report.figure("project step (run_finetune, LocalContext)", _common.median(project), "s/step",
                  runs=[round(x, 3) for x in project])
    for name, ts in eager.items():
        report.figure(name, _common.median(ts), "s/step", patches_per_s=round(batch / _common.median(ts), 3),
                      runs=[round(x, 3) for x in ts])
    ref = eager["eager fp32"]
    report.ratio_runs("eager fp32 / project step (s/step)", ref, project, goal=1.0,
                      note="project = eager + data + grad clip + bookkeeping; round i: project epoch i+1, then eager")
    others = {k: v for k, v in eager.items() if k != "eager fp32"}
    best = min(others, key=lambda k: _common.median(others[k]))
    report.ratio_runs(f"eager fp32 / best other variant ({best})", ref, others[best], goal=1.0)
    for name, ts in others.items():
        report.figure(f"speed-up of {name} over eager fp32", _common.median(ref) / _common.median(ts), "x")
    if device.type == "cpu":  # its own round robin: project bf16 epoch i + 1, then the eager fp32 step
        eager_b: dict[str, list[float]] = {}
        bf16 = [1 / r for r in project_rounds(store, cfg, patch, batch, steps, args.device, reps,
                                              eager_round({"eager fp32": steps_fns["eager fp32"]}, eager_b),
                                              cpu_bf16=True)]
        report.figure("project step, cpu_bf16=true", _common.median(bf16), "s/step", runs=[round(x, 3) for x in bf16])
        report.ratio_runs("eager fp32 / project step with cpu_bf16=true", eager_b["eager fp32"], bf16, goal=1.0,
                          note="opt-in: `--set cpu_bf16=true`")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
