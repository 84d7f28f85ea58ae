"""The two training commands, ``cclray pretrain`` and ``cclray finetune``: their shared arguments, the
typed stage config built from them, the checks made before Ray starts, and the run itself. (Not a
subcommand of its own: :mod:`cclray.commands.pretrain` and :mod:`cclray.commands.finetune` call it.)

Config precedence, lowest first: the stage's defaults < the run's own ``config.json`` (with
``--resume`` only) < ``--config FILE.json`` < ``--set key=value`` (in order) < explicit flags
(``--store``, ``--extra-store``, ``--epochs``, ``--steps``, ``--workers``, ``--gpus``, ``--constraint``,
``--init/--scratch``).
Nothing heavy (torch, ray, zarr) is imported at module level.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from cclray.config import CONFIGS, DEFAULT_CONSTRAINT, deep_merge, stage_config
from data_prep.config import ConfigError

log = logging.getLogger(__name__)

SHOWN_METRICS = ("epoch", "step", "loss", "val_l1", "val_ssim", "score", "lr", "steps_per_s")


# ---------------------------------------------------------------------------------------- arguments
def add_stage_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    """The options of ``cclray pretrain`` / ``cclray finetune`` (``stage``); defaults in the help are the
    stage config's."""
    d = CONFIGS[stage]
    parser.add_argument("--store", default=None, metavar="STORE",
                        help="Zarr store written by `cclray prep` (path or fsspec URL; may instead come "
                             "from --config)")
    parser.add_argument("--out", required=True, metavar="RUN",
                        help="run directory: checkpoints, config.json, metrics.csv, curves.png")
    if stage == "finetune":
        init = parser.add_mutually_exclusive_group(required=True)
        init.add_argument("--init", metavar="PRETRAIN_RUN_OR_CKPT",
                          help="start from a `cclray pretrain` run (its latest checkpoint) or one checkpoint")
        init.add_argument("--scratch", action="store_true",
                          help="start from random weights: the baseline, same budget")
        parser.add_argument("--splits", default=None, metavar="A,B",
                            help="training split(s) of the store, comma-separated (default: the config's, "
                                 f"{d.split!r}); `--scratch --splits pretrain,finetune` is the supervised-all "
                                 "ceiling (every subject with real targets)")
    parser.add_argument("--extra-store", action="append", default=None, metavar="STORE#SPLIT[,SPLIT]",
                        help="also train on these subjects of another store (repeatable; the config key `extra`, "
                             "whose mapping form {store, split, weight} sets a weight): every subject of every "
                             "store once a pass, so the bigger cohort's share is its size; the stores must agree "
                             "on channels, spacing and (pretrain) the constraint map")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help=f"Ray Train workers (DDP ranks; default: config's num_workers, {d.num_workers})")
    parser.add_argument("--gpus", action="store_true", help="one GPU per worker")
    parser.add_argument("--epochs", type=int, default=None, metavar="E",
                        help=f"epochs (default: config's, {d.epochs})")
    parser.add_argument("--steps", type=int, default=None, metavar="S",
                        help=f"optimizer steps per epoch on every worker (steps_per_epoch; default "
                             f"{d.steps_per_epoch})")
    if stage == "pretrain":
        parser.add_argument("--constraint", default=None, metavar="NAME",
                            help=f"constraint map of the store to pretrain with (default: {DEFAULT_CONSTRAINT}, "
                                 "the one `cclray prep` computes; `cclray constraint` adds others)")
    parser.add_argument("--config", default=None, metavar="FILE.json",
                        help="stage config as JSON (a plain config dict, or a run's config.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, dotted for nested ones; VALUE is JSON, else a "
                             "string; repeatable: --set loss.temperature=0.2 --set patch.patch_size=[32,32,32]")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its latest checkpoint (its config.json is "
                             "the base config); without it an existing run is refused")
    parser.add_argument("--max-failures", type=int, default=0, metavar="F",
                        help="worker-group restarts Ray may do, each from the latest checkpoint (default 0)")


# ---------------------------------------------------------------------------------------- config
def parse_value(text: str, key: str = "") -> object:
    """``--set`` value: JSON (``0.2``, ``true``, ``null``, ``[32,32,32]``, ``"x"``), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if text.lstrip()[:1] in "[{":
            raise ConfigError(f"--set {key}={text}: not valid JSON; quote strings inside lists, "
                              f'e.g. --set model.inputs=\'["t1gd","flair"]\'') from None
        return text


def parse_overrides(items: list[str]) -> dict:
    """``["loss.temperature=0.2", "epochs=3"]`` -> ``{"loss": {"temperature": 0.2}, "epochs": 3}``."""
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY, "
                              f"e.g. --set loss.temperature=0.2")
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[:i + 1])} was set to a value "
                                  f"by an earlier --set; it is not a group of keys")
        node[parts[-1]] = parse_value(text, key)
    return out


def read_config_file(path: str | Path, stage: str) -> dict:
    """A stage config dict from JSON ``path``: a plain config, or a run's ``{"stage", "config"}``."""
    from data_prep.objstore import location

    path = location(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file; pass a JSON stage config "
                          f"(e.g. a run's config.json)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {path}: not valid JSON ({e}); fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: holds a {type(data).__name__}, expected a JSON object of "
                          f"{stage} config keys")
    if set(data) == {"stage", "config"}:  # a run's config.json
        if data["stage"] != stage:
            raise ConfigError(f"--config {path} is a {data['stage']!r} run's config: use it with "
                              f"`cclray {data['stage']}`, or pass a {stage} config")
        data = data["config"]
    return dict(data)


def flag_values(args: argparse.Namespace, stage: str) -> dict:
    """The config keys the explicit flags set (only those given)."""
    values: dict = {}
    for flag, key in (("store", "store"), ("splits", "split"), ("epochs", "epochs"), ("steps", "steps_per_epoch"),
                      ("workers", "num_workers"), ("constraint", "constraint")):
        if getattr(args, flag, None) is not None:
            values[key] = getattr(args, flag)
    if args.gpus:
        values["use_gpu"] = True
    if getattr(args, "extra_store", None):
        values["extra"] = list(args.extra_store)
    if stage == "finetune":
        if getattr(args, "scratch", False):
            values["init"] = None
        elif getattr(args, "init", None) is not None:
            values["init"] = args.init
    return values


def _absolute(path: str | None) -> str | None:
    """Local paths made absolute (Ray workers may not share the caller's cwd); URLs unchanged."""
    if not path or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def _absolute_source(entry):
    """An ``extra`` entry with its store made absolute (a string entry parsed to its mapping first)."""
    from cclray.config import ExtraSource

    if isinstance(entry, str):
        entry = ExtraSource.parse(entry)
    if isinstance(entry, dict) and isinstance(entry.get("store"), str):
        entry = {**entry, "store": _absolute(entry["store"])}
    return entry


def config_dict(args: argparse.Namespace, stage: str) -> dict:
    """The merged plain config dict the arguments ask for (see the module docstring for precedence)."""
    from cclray.runs import CONFIG_FILE
    from data_prep.objstore import check_location, location

    data: dict = {}
    run_config = location(check_location(args.out)) / CONFIG_FILE
    if args.resume and run_config.is_file():
        data = read_config_file(run_config, stage)
    if args.config:
        data = deep_merge(data, read_config_file(args.config, stage))
    data = deep_merge(data, parse_overrides(args.overrides))
    data = deep_merge(data, flag_values(args, stage))
    for key in ("store", "init"):
        if isinstance(data.get(key), str):
            data[key] = _absolute(data[key])
    if isinstance(data.get("extra"), (list, tuple)):  # "URL#SPLIT" entries as mappings, local paths absolute
        data["extra"] = [_absolute_source(e) for e in data["extra"]]
    return data


def build_config(args: argparse.Namespace, stage: str):
    """The typed, validated :class:`~cclray.config.StageConfig` of ``stage``; raises
    :class:`ConfigError` (unknown key with did-you-mean, bad value) naming the key and the fix."""
    return stage_config(stage, config_dict(args, stage))


def preflight(cfg) -> None:
    """Cheap checks before Ray starts: the store and every ``extra`` store open, their splits exist and are
    not empty, they agree on channels and spacing, the constraint map (pretrain) is in each of them,
    ``init`` (finetune) is a pretrain run or checkpoint."""
    from cclray.checkpoint import CheckpointError, read_meta
    from cclray.data.sources import training_sources
    from cclray.runs import find_checkpoint
    from data_prep.store import Store

    training_sources(cfg, check_patches=False)  # every store and split, their channels, spacing, constraint map
    if getattr(cfg, "val_split", None):
        store = Store(cfg.store)
        if not store.subjects(cfg.val_split):
            raise ConfigError(f"split {cfg.val_split!r} of {cfg.store} is empty: re-run `cclray prep` with "
                              f"--splits giving it subjects, or pick another split (--set val_split=...)")
    if getattr(cfg, "init", None):
        ckpt = find_checkpoint(cfg.init, "latest")
        found = read_meta(ckpt).get("stage")
        if found != "pretrain":
            raise CheckpointError(f"--init {cfg.init}: {ckpt} is a {found!r} checkpoint; pass a "
                                  f"`cclray pretrain` run or checkpoint (or --scratch for the baseline)")


# ---------------------------------------------------------------------------------------- the run
def final_metrics(result: dict, run_dir: Path) -> dict:
    """The last epoch's metrics: Ray's last checkpointed report, else the last row of metrics.csv."""
    from cclray.runs import MetricsLog

    metrics = dict(result.get("metrics") or {})
    if not metrics:
        rows = MetricsLog(run_dir).rows()
        metrics = {k: v for k, v in (rows[-1] if rows else {}).items() if v != ""}
    return {k: metrics[k] for k in SHOWN_METRICS if metrics.get(k) not in (None, "")}


def _fmt(v) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return str(int(f)) if f.is_integer() and abs(f) < 1e9 else f"{f:.4g}"


def run_stage_command(args: argparse.Namespace, stage: str) -> int:
    """``cclray pretrain|finetune``: build and check the config, train with Ray, print where it went."""
    from cclray.console import epoch_progress
    from cclray.curves import plot_curves
    from cclray.train import fit, run_location
    from data_prep.atomic import atomic_write
    from data_prep.objstore import is_local, location

    if args.max_failures < 0:
        raise ConfigError(f"--max-failures {args.max_failures}: must be >= 0")
    cfg = build_config(args, stage)
    preflight(cfg)
    out = run_location(args.out)
    init = getattr(cfg, "init", "") if stage == "finetune" else ""
    print(f"cclray {stage}: {cfg.num_workers} worker(s){' with GPUs' if cfg.use_gpu else ''}, "
          f"{cfg.epochs} epoch(s) x {cfg.steps_per_epoch} step(s), store {cfg.store}"
          + "".join(f" + {e.store}#{e.split}" for e in cfg.extra)
          + (f", init {init or 'scratch (random weights)'}" if stage == "finetune" else "")
          + f", run {out}", flush=True)
    with epoch_progress(out, stage, cfg.epochs, poll_s=1.0 if is_local(out) else 10.0):  # a GET a poll on S3
        result = fit(stage, cfg, out, resume=args.resume, max_failures=args.max_failures)
    run_dir = location(result["run_dir"])
    print(f"\nrun:    {run_dir}\nbest:   {result['best']}\nlatest: {result['latest']}")
    metrics = final_metrics(result, run_dir)
    print("final:  " + "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()))
    try:
        if is_local(run_dir):
            print(f"curves: {plot_curves([run_dir], [run_dir.name], run_dir / 'curves.png')}")
        else:  # drawn locally, uploaded as one object
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                png = plot_curves([run_dir], [run_dir.name], Path(tmp) / "curves.png")
                atomic_write(run_dir / "curves.png", png.read_bytes())
            print(f"curves: {run_dir / 'curves.png'}")
    except Exception as e:  # a finished training is not failed by its figure
        log.warning("could not draw %s: %s", run_dir / "curves.png", e)
    return 0
