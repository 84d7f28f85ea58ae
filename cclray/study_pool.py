"""Pool studies run in separate folders into one report (``cclray study-pool``).

A study grows in its own folder (a rerun may add seeds, finetune sizes or arms: :func:`cclray.study.run_study`),
but seeds are often run in separate folders: on separate machines, or one after another while the first is
reported. :func:`pool_studies` reads each folder's finished evaluations (``f<fold>/seed<seed>/n<n>/evaluation/
metrics.csv`` with its ``DONE.json``) and writes the tables, figure and ``results.json`` of their union, exactly
as one study holding all of them would (:func:`cclray.study_report.write_tables`: each subject's seeds averaged
first, paired differences per subject with BCa CIs and Wilcoxon p).

Refused, with the folder named: a folder that holds no ``study_config.json``; folders whose studies differ in
anything but seeds, finetune sizes and arms (cohort, splits, folds, spacing, recipe: :func:`cclray.study.comparable`;
the data are compared by their stores' fingerprints, so a cohort prepared from another path or on another machine
pools); the same seed at the same n in two folders (its subjects would be counted twice); an output folder that is
one of the inputs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from cclray.study import DONE, comparable
from cclray.study_plan import ARMS, StudyConfig
from data_prep.errors import UserError

CONFIG = "study_config.json"


def read_study(folder: Path) -> dict:
    """The folder's recorded ``study_config.json``."""
    path = folder / CONFIG
    if not path.is_file():
        raise UserError(f"{folder}: no {CONFIG}, so not a `cclray study` folder; pass the --out of a study run")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path}: not readable JSON ({e}); rerun `cclray study` in that folder to rewrite it") from e


def finished_evaluations(folder: Path) -> dict[tuple[int, int], list[Path]]:
    """``{(n, seed): [metrics.csv of each fold]}`` of the folder's finished evaluations (``DONE.json`` there)."""
    found: dict[tuple[int, int], list[Path]] = {}
    for csv in sorted(folder.glob("f*/seed*/n*/evaluation/metrics.csv")):
        if not (csv.parent / DONE).exists():
            continue
        fold, seed, n = csv.parts[-5:-2]
        if not (fold[1:].isdigit() and seed[4:].isdigit() and n[1:].isdigit()):
            continue
        found.setdefault((int(n[1:]), int(seed[4:])), []).append(csv)
    return found


def cohort_of(folder: Path, study: dict) -> dict:
    """The study with its data named by what it holds: each store's fingerprint (subjects, splits, preparation) in
    place of the source folder's path, so runs of one cohort from different paths or machines pool; the path
    where the folder holds no store."""
    from data_prep.store import Store

    study = comparable(study)
    for key, name in (("src", "store.zarr"), ("test_src", "test_store.zarr")):
        if (folder / name).exists():
            study[key] = {"store fingerprint": Store(str(folder / name), mode="r").attrs.get("fingerprint")}
    return study


def differing_settings(a: dict, b: dict) -> list[str]:
    """The names of the settings in which two :func:`comparable` studies differ."""
    keys = sorted(set(a["config"]) | set(b["config"]))
    names = [k for k in keys if a["config"].get(k) != b["config"].get(k)]
    return names + [k for k in sorted((set(a) | set(b)) - {"config"}) if a.get(k) != b.get(k)]


def pool_studies(folders: list[str | os.PathLike], out: str | os.PathLike,
                 say: Callable[[str], None] = print) -> dict:
    """Write ``table.md``, ``study.png``, ``results.json`` and ``pool.json`` (which folder gave which seeds) of the
    union of ``folders``' finished evaluations into ``out``; return the aggregated results."""
    from cclray.evaluation.report import read_metrics_csv
    from cclray.study_report import write_tables

    paths = [Path(f).expanduser().resolve() for f in folders]
    out = Path(out).expanduser().resolve()
    if not paths:
        raise UserError("name at least one study folder to pool")
    if out in paths:
        raise UserError(f"--out {out} is one of the folders pooled; its table.md would be overwritten: pass another")
    if len(set(paths)) != len(paths):
        raise UserError(f"a folder is named twice: {[str(p) for p in paths if paths.count(p) > 1][0]}")
    studies = [read_study(p) for p in paths]
    first = cohort_of(paths[0], studies[0])
    for path, study in zip(paths[1:], studies[1:]):
        apart = differing_settings(first, cohort_of(path, study))
        if apart:
            raise UserError(f"{path} holds a study with other settings than {paths[0]} ({', '.join(apart)}): only "
                            f"studies that differ in seeds, finetune sizes or arms pool (same cohort, splits, recipe)")
    rows: dict[int, dict[int, list[dict]]] = {}
    source: dict[tuple[int, int], Path] = {}
    sources = []
    for path in paths:
        found = finished_evaluations(path)
        for (n, seed), csvs in sorted(found.items()):
            if (n, seed) in source:
                raise UserError(f"seed {seed} at n = {n} is in both {source[n, seed]} and {path}: pool each seed "
                                f"from one folder (a rerun in one folder may add arms to a seed)")
            source[n, seed] = path
            rows.setdefault(n, {})[seed] = [r for csv in csvs for r in read_metrics_csv(csv)]
        arms = sorted({r["run"] for n, s in found for r in rows[n][s]}, key=lambda a: (a not in ARMS, a))
        entry = {"folder": str(path), "seeds": sorted({s for _, s in found}), "sizes": sorted({n for n, _ in found}),
                 "arms": arms, "evaluations": sum(len(c) for c in found.values())}
        sources.append(entry)
        say(f"{path}: seeds {entry['seeds']}, n {entry['sizes']}, {entry['evaluations']} finished evaluation(s), "
            f"arms {arms}")
    for n, by_seed in sorted(rows.items()):  # a seed with fewer test subjects (a fold not evaluated) says so
        subjects = {seed: {r["subject"] for r in rs} for seed, rs in by_seed.items()}
        every = set().union(*subjects.values())
        for seed, have in sorted(subjects.items()):
            if have != every:
                say(f"note: seed {seed} at n = {n} ({source[n, seed]}) has {len(have)} of the {len(every)} test "
                    f"subjects; each of the others is averaged over the seeds that have it")
    if not rows:
        raise UserError(f"no finished evaluation (f*/seed*/n*/evaluation/metrics.csv with {DONE}) in "
                        f"{', '.join(map(str, paths))}: pool the folders once their studies have evaluated")
    cfg = StudyConfig.from_dict({**first["config"], "seeds": sorted({s for by_seed in rows.values() for s in by_seed}),
                                 "finetune_sizes": sorted(rows),
                                 "arms": [a for a in ARMS if any(a in e["arms"] for e in sources)]}, where=CONFIG)
    out.mkdir(parents=True, exist_ok=True)
    note = (f"Pooled by `cclray study-pool` from {len(paths)} study folder(s): "
            + "; ".join(f"{Path(e['folder']).name} (seeds {e['seeds']})" for e in sources) + ".")
    result = write_tables(out, cfg, rows, note=note)
    result["pooled_from"] = sources
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "pool.json").write_text(json.dumps({"folders": sources, "study": first}, indent=2, default=str))
    say("\n" + (out / "table.md").read_text())
    return result
