"""``cclray export``: a finetuned run (or checkpoint) -> ONNX file with its model card, parity-checked."""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="finetune run folder (its best/latest checkpoint is exported)")
    src.add_argument("--checkpoint", help="one checkpoint folder or file")
    src.add_argument("--sweep", help="a `cclray tune` sweep folder (its best trial's finetune checkpoint is exported)")
    parser.add_argument("--out", required=True, help="MODEL.onnx to write (atomically; nothing on failure)")
    parser.add_argument("--fp16", action="store_true",
                        help="store weights as float16 (half the file); inputs, outputs and compute stay float32")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="static int8 (QDQ) calibrated on the run's store; written only if it loses <= 0.002 "
                             "masked SSIM and <= 0.2 dB PSNR on the store's test patches (reported either way)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--parity-patch", type=int, default=None,
                        help="edge of the random parity batch (default: the training patch size)")


def run(args: argparse.Namespace) -> int:
    from export.onnx_export import export_onnx

    source = args.run or args.checkpoint
    if getattr(args, "sweep", None):
        from tune.report import best_checkpoint

        source = str(best_checkpoint(args.sweep))
        print(f"sweep {args.sweep}: best trial's checkpoint {source}")
    print(f"exporting {source} to {args.out} (opset {args.opset}, {args.quantize or ('fp16' if args.fp16 else 'fp32')} weights; "
          f"torch.export, then parity against torch) ...", flush=True)
    report = export_onnx(source, args.out, fp16=args.fp16, opset=args.opset, parity_patch=args.parity_patch,
                         quantize=args.quantize)
    card = report["card"]
    print(f"wrote {report['path']} ({report['precision']}, {report['bytes'] / 1e6:.1f} MB) "
          f"{'+'.join(card['inputs'])} -> {'+'.join(card['targets'])}, patch {card['patch_size']}, "
          f"stride {card['stride']}")
    if "quantization" in report:
        print("int8 quality cost: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                    for k, v in report["quantization"].items()}))
    print("parity (max |onnx - torch|): " + json.dumps({k: float(f"{v:.3g}") for k, v in report["parity"].items()}))
    return 0
