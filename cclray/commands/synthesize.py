"""``cclray synthesize``: run an exported ONNX synthesizer on NIfTI inputs. Needs no torch and no Ray.

Outputs are float32 NIfTIs on the input grid with the input's affine and header, in the **z-scored
units of the training targets** (per-subject z-score inside the brain), background 0.
"""
from __future__ import annotations

import argparse

HELP = "run an ONNX synthesizer on NIfTI inputs (no torch needed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = " ".join(__doc__.split())
    parser.add_argument("--model", required=True, help="MODEL.onnx written by `cclray export`")
    parser.add_argument("--t1c", help="T1Gd (contrast-enhanced T1) NIfTI, with --flair")
    parser.add_argument("--flair", help="FLAIR NIfTI, with --t1c")
    parser.add_argument("--subject", help="one BraTS subject folder (2021 or 2023 naming)")
    parser.add_argument("--cohort", help="folder of BraTS subject folders")
    parser.add_argument("--out", required=True, help="output folder (<sid>-t1n-synth.nii.gz, ... written there)")
    parser.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda", "tensorrt", "openvino"],
                        help="onnxruntime execution provider (auto: TensorRT, CUDA, OpenVINO, then CPU: "
                             "the first this onnxruntime build has)")
    parser.add_argument("--overlap", type=float, default=None, help="window overlap in [0, 1) (default: card's)")
    parser.add_argument("--batch", type=int, default=None, help="windows per onnxruntime call")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")


def _jobs(args, contrasts):
    """[(sid, naming, {contrast: path})] for the chosen input mode."""
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
        return [(sid, naming, files)]
    subjects = [rio.subject_inputs(args.subject, contrasts)] if args.subject else rio.cohort_inputs(args.cohort, contrasts)
    return [(s.sid, s.naming, s.files) for s in subjects]


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from tqdm import tqdm

    from export import runtime_io as rio
    from export.card import CardError
    from export.runtime import DEFAULT_BATCH, OnnxSynthesizer, RuntimeSetupError

    try:
        synth = OnnxSynthesizer(args.model, provider=args.provider, threads=args.threads)
        card = synth.card
        jobs = _jobs(args, card.inputs)
    except (rio.InputError, CardError, RuntimeSetupError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model {args.model}: {'+'.join(card.inputs)} -> {'+'.join(card.targets)} on {synth.provider}")
    cohort = len(jobs) > 1 or bool(args.cohort)
    failed = 0
    for sid, naming, files in tqdm(jobs, desc="subjects", unit="subj", disable=not cohort):
        t0 = time.perf_counter()
        try:
            vols = rio.load_inputs(files)
            out = synth.synthesize({c: v.data for c, v in vols.items()}, {c: v.affine for c, v in vols.items()},
                                   overlap=args.overlap, batch_size=args.batch or DEFAULT_BATCH)
            written = rio.write_outputs(out, vols[card.inputs[0]], rio.output_paths(args.out, sid, naming, card.targets))
        except (rio.InputError, CardError, ValueError) as e:
            failed += 1
            print(f"error: {sid}: {e}", file=sys.stderr)
            if not cohort:
                return 2
            continue
        msg = f"{sid}: wrote {', '.join(written)} ({time.perf_counter() - t0:.1f} s, {synth.provider})"
        tqdm.write(msg) if cohort else print(msg)
    if failed:
        print(f"{failed} of {len(jobs)} subject(s) failed (see errors above); the others were written",
              file=sys.stderr)
        return 1
    return 0
