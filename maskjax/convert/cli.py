"""``maskjax convert ...``: checkpoint conversion from the command line.

    maskjax convert mae-official mae_pretrain_vit_base.pth out/mae_b16 [--variant B/16] [--kind pretrain]
    maskjax convert hf-to-maskjax path/to/hf_folder_or_model.safetensors out/hf_b16
    maskjax convert maskjax-to-hf out/mae_b16_or_a_training_workdir hf_out/
    maskjax convert maskjax-to-official out/mae_b16_or_a_training_workdir mae_b16.pth
    maskjax convert hf-bert-to-maskjax path/to/bert_folder out/bert      # BERT / ELECTRA, MLM / pre-training / encoder
    maskjax convert hf-electra-to-maskjax gen_folder disc_folder out/electra
    maskjax convert maskjax-to-hf-bert out/bert_or_a_text_training_workdir hf_out/
    maskjax convert hf-videomae-to-maskjax path/to/videomae_folder out/videomae   # VideoMAEForPreTraining
    maskjax convert maskjax-to-hf-videomae out/videomae_or_a_video_training_workdir hf_out/
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from maskjax.convert.common import ConversionError
from maskjax.progress import phase


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``maskjax convert``."""
    parser = argparse.ArgumentParser(prog="maskjax convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    off = sub.add_parser("mae-official", help="official MAE .pth (pretrain / visualize / finetuned) -> maskjax")
    off.add_argument("src", help="the released .pth file, e.g. mae_pretrain_vit_base.pth")
    off.add_argument("out", help="output directory (maskjax_model.json + Orbax variables/)")
    off.add_argument("--variant", help="expected variant such as B/16 (default: detected from shapes)")
    off.add_argument("--kind", choices=["pretrain", "visualize", "finetuned"], help="expected checkpoint kind")
    off.add_argument("--image-size", type=int, help="expected image size (default: from pos_embed)")
    off.add_argument("--decoder-heads", type=int, default=16, help="decoder attention heads (default 16, as MAE)")

    hf = sub.add_parser("hf-to-maskjax", help="Hugging Face ViTMAE / ViT folder or weights file -> maskjax")
    hf.add_argument("src", help="HF model folder (config.json + model.safetensors) or a .safetensors/.bin file")
    hf.add_argument("out", help="output directory")
    hf.add_argument("--variant", help="expected variant such as B/16 (default: detected from shapes)")
    hf.add_argument("--decoder-heads", type=int, default=16,
                    help="decoder heads when there is no config.json (default 16)")

    for name, what in (("maskjax-to-hf", "an HF folder (config.json + model.safetensors)"),
                       ("maskjax-to-official", "an official-layout MAE .pth state dict")):
        p = sub.add_parser(name, help=f"converted maskjax model or training workdir -> {what}")
        p.add_argument("src", help="a converted directory (maskjax_model.json) or a training workdir")
        p.add_argument("out", help="output folder" if name == "maskjax-to-hf" else "output .pth file")
        p.add_argument("--step", type=int, help="checkpoint step of a training workdir (default: newest)")

    hb = sub.add_parser("hf-bert-to-maskjax", help="Hugging Face BERT / ELECTRA folder or weights file -> maskjax")
    hb.add_argument("src", help="HF folder (config.json + weights) of BertForMaskedLM, BertForPreTraining, "
                    "ElectraForMaskedLM, ElectraForPreTraining or a bare encoder")
    hb.add_argument("out", help="output directory")
    hb.add_argument("--kind", help="force the model kind (default: from config.json / the weights)")
    he = sub.add_parser("hf-electra-to-maskjax", help="HF ELECTRA generator + discriminator -> one maskjax Electra")
    he.add_argument("generator", help="HF ElectraForMaskedLM folder")
    he.add_argument("discriminator", help="HF ElectraForPreTraining folder")
    he.add_argument("out", help="output directory")
    he.add_argument("--strict", action="store_true", help="fail if the two checkpoints' embeddings differ")
    th = sub.add_parser("maskjax-to-hf-bert", help="converted maskjax text model or text training workdir -> HF")
    th.add_argument("src", help="a converted directory or a BERT / ELECTRA training workdir")
    th.add_argument("out", help="output folder (an ELECTRA writes generator/ and discriminator/ inside)")
    th.add_argument("--architecture", help="HF architecture to write, e.g. BertForMaskedLM")
    th.add_argument("--step", type=int, help="checkpoint step of a training workdir (default: newest)")

    hv = sub.add_parser("hf-videomae-to-maskjax", help="Hugging Face VideoMAEForPreTraining folder -> maskjax")
    hv.add_argument("src", help="HF folder (config.json + weights) or a weights file with --num-frames/--image-size")
    hv.add_argument("out", help="output directory (maskjax_video_model.json + Orbax variables/)")
    hv.add_argument("--variant", help="expected variant such as B/16 (default: detected from shapes)")
    hv.add_argument("--num-frames", type=int, help="frames per clip when there is no config.json")
    hv.add_argument("--image-size", type=int, help="frame size when there is no config.json")
    hv.add_argument("--decoder-heads", type=int, help="decoder heads when there is no config.json")
    tv = sub.add_parser("maskjax-to-hf-videomae", help="converted maskjax VideoMAE or video training workdir -> HF")
    tv.add_argument("src", help="a converted directory (maskjax_video_model.json) or a videomae training workdir")
    tv.add_argument("out", help="output folder (config.json + model.safetensors)")
    tv.add_argument("--step", type=int, help="checkpoint step of a training workdir (default: newest)")

    for p in sub.choices.values():
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser


def read_maskjax(src: str, step: int | None = None):
    """(spec, params, extra) from a converted directory or a training work directory."""
    from maskjax.convert import store

    if os.path.exists(os.path.join(src, store.SPEC_FILE)):
        if step is not None:
            raise ConversionError("--step applies to training workdirs only")
        return store.load_converted_variables(src)
    return store.read_train_workdir(src, step)


def _run(args) -> str:
    if args.command == "mae-official":
        from maskjax.convert.mae_official import convert_official_checkpoint

        spec = convert_official_checkpoint(args.src, args.out, variant=args.variant, kind=args.kind,
                                           image_size=args.image_size, decoder_heads=args.decoder_heads,
                                           overwrite=args.overwrite)
        return f"wrote maskjax {spec.kind} {spec.variant} @ {spec.image_size}px to {args.out}"
    if args.command == "hf-to-maskjax":
        from maskjax.convert.hf_vit import convert_hf_checkpoint

        spec = convert_hf_checkpoint(args.src, args.out, variant=args.variant, decoder_heads=args.decoder_heads,
                                     overwrite=args.overwrite)
        return f"wrote maskjax {spec.kind} {spec.variant} @ {spec.image_size}px to {args.out}"
    if args.command in ("hf-bert-to-maskjax", "hf-electra-to-maskjax", "maskjax-to-hf-bert"):
        return _run_text(args)
    if args.command in ("hf-videomae-to-maskjax", "maskjax-to-hf-videomae"):
        return _run_video(args)
    spec, params, extra = read_maskjax(args.src, args.step)
    if args.command == "maskjax-to-hf":
        from maskjax.convert.hf_vit import hf_config, save_hf

        save_hf(args.out, spec, params, extra, overwrite=args.overwrite)
        return f"wrote Hugging Face {hf_config(spec)['architectures'][0]} ({spec.variant}) to {args.out}"
    from maskjax.convert.mae_official import maskjax_to_official
    from maskjax.convert.torch_io import save_torch

    if os.path.exists(args.out) and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; pass --overwrite to replace it")
    sd = maskjax_to_official(spec, params, extra)
    with phase(f"writing {args.out}"):
        save_torch(sd, args.out, nest="model")
    return f"wrote official-layout {spec.kind} {spec.variant} state dict to {args.out}"


def _run_text(args) -> str:
    from maskjax.convert import hf_bert

    if args.command == "hf-bert-to-maskjax":
        spec = hf_bert.convert_hf_bert_checkpoint(args.src, args.out, kind=args.kind, overwrite=args.overwrite)
        return f"wrote maskjax {spec.kind} text model to {args.out}"
    if args.command == "hf-electra-to-maskjax":
        hf_bert.convert_hf_electra_pair(args.generator, args.discriminator, args.out, strict=args.strict,
                                        overwrite=args.overwrite)
        return f"wrote maskjax ELECTRA (generator + discriminator) to {args.out}"
    if os.path.exists(os.path.join(args.src, "config.json")) and os.path.isdir(os.path.join(args.src, "checkpoints")):
        model = text_model_from_workdir(args.src, args.step)
        folders = hf_bert.bert_to_hf(model, args.out, architecture=args.architecture, overwrite=args.overwrite)
    else:
        if args.step is not None:
            raise ConversionError("--step applies to training workdirs only")
        folders = hf_bert.convert_maskjax_to_hf_bert(args.src, args.out, architecture=args.architecture,
                                                     overwrite=args.overwrite)
    return "wrote Hugging Face folder(s): " + ", ".join(map(str, folders))


def _run_video(args) -> str:
    from maskjax.convert import hf_videomae

    if args.command == "hf-videomae-to-maskjax":
        spec = hf_videomae.convert_hf_videomae_checkpoint(
            args.src, args.out, variant=args.variant, num_frames=args.num_frames, image_size=args.image_size,
            decoder_heads=args.decoder_heads, overwrite=args.overwrite)
        return (f"wrote maskjax VideoMAE {spec.variant} ({spec.num_frames}x{spec.image_size}px) to {args.out}; "
                f"load it with maskjax.convert.hf_videomae.load_video_converted({args.out!r})")
    spec = hf_videomae.convert_maskjax_to_hf_videomae(args.src, args.out, step=args.step, overwrite=args.overwrite)
    return f"wrote Hugging Face VideoMAEForPreTraining ({spec.variant}) to {args.out}"


def text_model_from_workdir(workdir: str, step: int | None = None):
    """The BERT / ELECTRA model of a maskjax text training run (newest checkpoint by default)."""
    import json

    import ml_collections

    from maskjax.eval.cli import load_checkpoint_model

    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.method not in ("bert", "electra"):
        raise ConversionError(f"{workdir} trained method {config.method!r}; maskjax-to-hf-bert converts "
                              "'bert' and 'electra' runs (use maskjax-to-hf for MAE)")
    with phase(f"reading the checkpoint of {workdir}"):
        model, _, _ = load_checkpoint_model(config, workdir, step)
    return model


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``maskjax convert``; ``argv`` excludes the program and ``convert``. Returns 0 on success."""
    args = build_parser().parse_args(argv)
    try:
        # Reading, converting and writing each print a line (with the time) when they take a while;
        # this one always does, so even a quick conversion says how long it took.
        with phase(f"maskjax convert {args.command}", quiet_below=0):
            message = _run(args)
    except (ConversionError, FileNotFoundError, FileExistsError, ImportError, ValueError) as e:
        # Problems the user can act on: the message, not a traceback; status 2 as every maskjax command.
        print(f"maskjax convert {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(message)
    if args.command in ("mae-official", "hf-to-maskjax"):
        print(f"load it with: from maskjax.convert import load_converted; model = load_converted({args.out!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
