"""`react convert --model NAME IN OUT --to {adapter,full,official}`: rewrite a customized model's file."""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Read IN (an official REACT file, a full state dict, or an adapter file; gated blocks are detected
from the keys, an adapter names its own base model) and write OUT in another layout:

  adapter   only the tensors MODE trains, as safetensors with metadata naming the base model
            (give it with --pretrained TAG or --base-weights FILE). The tensors MODE freezes must
            equal the base model's (up to fp16 rounding), or nothing is written.
  full      the whole state dict (.safetensors, or torch.save for any other suffix).
  official  the released REACT layout: fp16, wrapped in {"state_dict": ...}, `module.` prefixes.
"""


def register(subparsers):
    parser = subparsers.add_parser(
        "convert",
        help="convert customized-model files between adapter, full and official layouts",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="architecture, e.g. ViT-B-32-quickgelu or react-tiny")
    parser.add_argument("input", metavar="IN", help="file to read")
    parser.add_argument("output", metavar="OUT", help="file to write")
    parser.add_argument("--to", required=True, choices=("adapter", "full", "official"), help="layout of OUT")
    parser.add_argument("--mode", default="gated-image", choices=("gated-image", "locked-text", "full"),
                        help="what an adapter holds (default: gated-image)")
    parser.add_argument("--pretrained", help="open_clip pretrained tag of the base model (for --to adapter)")
    parser.add_argument("--base-weights", help="base model weights file (for --to adapter, or where an adapter's base moved)")
    parser.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                        help="force the activation (default: pinned from the tag or model name)")
    parser.add_argument("--fp32", action="store_true", help="official layout: keep fp32 instead of fp16")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT that another conversion wrote")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from pathlib import Path

    from react_core.cli import UserError
    from react_core.modeling.gated import gated_layers
    from react_core.outputs import argument_settings, claim_file

    if Path(args.input).resolve() == Path(args.output).resolve():
        raise UserError(f"IN and OUT are the same file: {args.input}")
    settings = argument_settings(args)
    with claim_file(args.output, "react convert", settings, args.overwrite):
        bundle = _convert(args)
    print(f"wrote {args.output} ({args.to}, gated layers {gated_layers(bundle.model) or 'none'})")
    return 0


def _convert(args):
    """Read IN, write OUT in the layout asked for; returns the model read."""
    from react_core.cli import UserError
    from react_core.modeling import CheckpointError, load_clip
    from react_core.modeling.adapters import check_frozen_unchanged, save_adapter, save_full, save_official
    from react_core.modeling.gated import gated_layers

    try:
        bundle = load_clip(args.model, weights=args.input, quick_gelu=args.quick_gelu, base_weights=args.base_weights)
        if args.to == "full":
            save_full(bundle.model, args.output)
        elif args.to == "official":
            save_official(bundle.model, args.output, fp16=not args.fp32)
        else:
            if bundle.spec.adapter:
                base_spec = bundle.spec
            else:
                if not args.pretrained and not args.base_weights:
                    raise UserError("--to adapter needs the base model: --pretrained TAG or --base-weights FILE")
                base = load_clip(args.model, args.pretrained, args.base_weights, quick_gelu=bundle.spec.quick_gelu)
                check_frozen_unchanged(bundle.model, base.model, args.mode, source=args.input)
                base_spec = base.spec
            save_adapter(bundle.model, args.output, spec=base_spec, mode=args.mode, layers=gated_layers(bundle.model))
    except (CheckpointError, ValueError, TypeError) as error:
        raise UserError(str(error)) from None
    return bundle
