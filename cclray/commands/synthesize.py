"""``cclray synthesize``: run an exported ONNX synthesizer on NIfTI inputs. Needs no torch; Ray only with --ray (export/scaleout.py).

Outputs are float32 NIfTIs on the input grid with the input's affine and header, in the **z-scored
units of the training targets** (per-subject z-score inside the brain), background 0.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = " ".join(__doc__.split())
    parser.add_argument("--model", required=True, help="MODEL.onnx written by `cclray export`")
    parser.add_argument("--t1c", help="T1Gd (contrast-enhanced T1) NIfTI, with --flair")
    parser.add_argument("--flair", help="FLAIR NIfTI, with --t1c")
    parser.add_argument("--subject", help="one BraTS subject folder (2021 or 2023 naming)")
    parser.add_argument("--cohort", help="folder of BraTS subject folders, or its URL (s3://bucket/cohort)")
    parser.add_argument("--out", required=True, help="output folder or URL (<sid>-t1n-synth.nii.gz, ... written there)")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="with --cohort: spread subjects over a Ray cluster (ADDRESS, e.g. ray://head:10001 "
                             "or auto; without it RAY_ADDRESS or a local Ray), one onnxruntime session per worker")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="with --ray: workers (default: the cluster's CPUs / --threads)")
    parser.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda", "tensorrt", "openvino"],
                        help="onnxruntime execution provider (auto: TensorRT, CUDA, OpenVINO, then CPU: "
                             "the first this onnxruntime build has)")
    parser.add_argument("--overlap", type=float, default=None, help="window overlap in [0, 1) (default: card's)")
    parser.add_argument("--batch", type=int, default=None, help="windows per onnxruntime call")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--no-resample", dest="resample", action="store_false",
                        help="refuse inputs whose voxel size differs from the model's training grid (model card "
                             "`spacing`) instead of resampling them to it and the outputs back")
    parser.add_argument("--timings", action="store_true",
                        help="print seconds per stage for each subject (read, preprocess, inference, blend, "
                             "postprocess, write) and the session start-up")


def _jobs(args, contrasts):
    """``([(sid, naming, {contrast: path})], [unusable subjects of a cohort])`` for the chosen input mode."""
    from export import runtime_io as rio

    modes = [m for m in ("files", "subject", "cohort")
             if (m == "files" and (args.t1c or args.flair)) or (m != "files" and getattr(args, m))]
    if len(modes) != 1:
        raise rio.InputError("choose exactly one input: --t1c X --flair Y, --subject DIR or --cohort DIR")
    if modes[0] == "files":
        given = {"t1gd": args.t1c, "flair": args.flair}
        missing = [f"--{'t1c' if c == 't1gd' else c}" for c in contrasts if not given.get(c)]
        if missing or set(contrasts) - set(given):
            raise rio.InputError(f"the model takes {list(contrasts)}: give {' and '.join(missing) or 'its inputs'} "
                                 f"(or use --subject DIR)")
        files = {c: given[c] for c in contrasts}
        sid, naming = rio.files_subject(files)
        return [(sid, naming, files)], []
    if args.subject:
        s = rio.subject_inputs(args.subject, contrasts)
        return [(s.sid, s.naming, s.files)], []
    subjects, failed = rio.cohort_inputs(args.cohort, contrasts)
    return [(s.sid, s.naming, s.files) for s in subjects], failed


def _run_cohort(args, synth) -> int:
    """--cohort with --ray, or with a URL: export.scaleout (per-subject failures reported, outputs atomic)."""
    import sys

    from tqdm import tqdm

    from data_prep.objstore import check_bucket
    from export import scaleout

    check_bucket(args.out)
    jobs, unusable = scaleout.cohort_jobs(args.cohort, synth.card.inputs)
    for e in unusable:  # a cohort's unusable subjects are reported and skipped, as `cclray prep` skips them
        print(f"cclray synthesize: error: {e.sid}: {e}", file=sys.stderr)
    threads = args.threads or (1 if args.ray is not None else None)
    bar = tqdm(total=len(jobs), desc="subjects", unit="subj")

    def report(r):
        bar.update(1)
        if r.ok:
            bar.write(f"{r.sid}: wrote {', '.join(r.written)} ({r.seconds:.1f} s{', ' + r.node if r.node else ''})")
            if args.timings:
                bar.write(f"{r.sid} timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in r.stages.items()))
        else:
            bar.write(f"cclray synthesize: error: {r.sid}: {r.error}", file=sys.stderr)

    if args.ray is None:  # a URL without a cluster: the same per-subject code, in this process
        results = []
        for job in jobs:
            results.append(scaleout.synthesize_subject(synth, job, args.out, args.overlap, args.batch, args.resample))
            report(results[-1])
    else:
        print(scaleout.connect(args.ray or None))
        results = scaleout.run_cohort(args.model, jobs, args.out, workers=args.workers, threads=threads,
                                      provider=args.provider, overlap=args.overlap, batch_size=args.batch,
                                      resample=args.resample, on_result=report)
    bar.close()
    failed = [r.sid for r in results if not r.ok] + [e.sid for e in unusable]
    if failed:
        print(f"{len(failed)} of {len(jobs) + len(unusable)} subject(s) failed: {', '.join(failed)} (errors above); "
              f"the others were written", file=sys.stderr)
        return 1
    print(f"{len(jobs)} subject(s) written to {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from tqdm import tqdm

    from data_prep.errors import UserError
    from data_prep.objstore import is_remote
    from export import runtime_io as rio
    from export.runtime import DEFAULT_BATCH, OnnxSynthesizer

    scaled = args.ray is not None or bool(args.cohort and (is_remote(args.cohort) or is_remote(args.out)))
    if args.ray is not None and not args.cohort:
        raise rio.InputError("--ray spreads a --cohort over a cluster: pass --cohort DIR_OR_URL")
    t_session = time.perf_counter()
    synth = OnnxSynthesizer(args.model, provider=args.provider, threads=args.threads)
    t_session = time.perf_counter() - t_session
    card = synth.card
    jobs, unusable = ([], []) if scaled else _jobs(args, card.inputs)
    print(f"model {args.model}: {'+'.join(card.inputs)} -> {'+'.join(card.targets)} on {synth.provider}"
          + (f" ({card.precision}; session {t_session:.2f} s)" if args.timings else ""))
    if scaled:  # export.scaleout: the same per-subject code in this process or on Ray workers
        return _run_cohort(args, synth)
    cohort = len(jobs) > 1 or bool(args.cohort)
    for e in unusable:  # a cohort's unusable subjects are reported and skipped, as `cclray prep` skips them
        print(f"cclray synthesize: error: {e.sid}: {e}", file=sys.stderr)
    failed = len(unusable)
    for sid, naming, files in tqdm(jobs, desc="subjects", unit="subj", disable=not cohort):
        t0 = time.perf_counter()
        stages: dict[str, float] = {}
        try:
            vols = rio.load_inputs(files, sid)
            stages["read"] = time.perf_counter() - t0
            out = synth.synthesize({c: v.data for c, v in vols.items()}, {c: v.affine for c, v in vols.items()},
                                   overlap=args.overlap, batch_size=args.batch or DEFAULT_BATCH,
                                   resample=args.resample, timings=stages)
            paths = rio.output_paths(args.out, sid, naming, card.targets)
            t_write = time.perf_counter()
            written = rio.write_outputs(out, vols[card.inputs[0]], paths)
            stages["write"] = time.perf_counter() - t_write
        except UserError as e:
            if not cohort:
                raise
            failed += 1
            print(f"cclray synthesize: error: {sid}: {e}", file=sys.stderr)
            continue
        msg = f"{sid}: wrote {', '.join(written)} ({time.perf_counter() - t0:.1f} s, {synth.provider})"
        tqdm.write(msg) if cohort else print(msg)
        if args.timings:
            line = f"{sid} timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items())
            tqdm.write(line) if cohort else print(line)
    if failed:
        print(f"{failed} of {len(jobs) + len(unusable)} subject(s) failed (see errors above); the others were written",
              file=sys.stderr)
        return 1
    return 0
