"""``das build-cache``: encode K x (1 + P) prompts once into a DriftCache file."""

from __future__ import annotations

import argparse
import sys
import time

from jobs.common import UsageError, add_common_options, check_output_file, log, read_lines_from, run_main


def build_parser(prog: str = "das build-cache") -> argparse.ArgumentParser:
    from das_core.prompts import CLEAN_TEMPLATE, NOISY_TEMPLATE

    p = argparse.ArgumentParser(prog=prog, description=(
        "Encode each class's clean prompt and its noise-conditioned prompts once, with the text tower of "
        "CHECKPOINT, and save the drift cache DAS scores with (METHOD.md section 2)."))
    p.add_argument("--labels", required=True, metavar="FILE",
                   help="class labels, one per line (local path or s3://); dataset spellings such as dog_bark "
                        "are turned into prompt text ('dog bark')")
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="CLAP checkpoint: LAION .pt (local path, s3:// URI or a published name such as "
                        "630k-audioset-best) or Hugging Face ClapModel folder (local, s3:// prefix or hub id such "
                        "as laion/clap-htsat-unfused)")
    p.add_argument("--out", required=True, metavar="URI", help="where to write the cache (.npz; local or s3://)")
    p.add_argument("--noise-phrases", metavar="FILE",
                   help="noise phrases, one per line (default: 8 urban-scene phrases, see README)")
    p.add_argument("--lam", type=float, default=0.1,
                   help="weight of the drift bonus (default 0.1, chosen here; the paper only calls it small)")
    p.add_argument("--clean-template", default=CLEAN_TEMPLATE, help=f"default {CLEAN_TEMPLATE!r}")
    p.add_argument("--clean-templates", metavar="FILE",
                   help="a prompt ensemble for the clean prototype: templates with {label}, one per line; C_c is "
                        "the renormalised mean of their unit embeddings (instead of --clean-template)")
    p.add_argument("--noisy-template", default=NOISY_TEMPLATE, help=f"default {NOISY_TEMPLATE!r}")
    p.add_argument("--tokenizer-dir", metavar="DIR",
                   help="roberta-base tokenizer files, for LAION checkpoints with a RoBERTa text tower when "
                        "offline (Hugging Face folders carry their own tokenizer)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu; text encoding is cheap)")
    add_common_options(p)
    return p


def check_device(device: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu "
                         "(the default; text encoding is cheap)")


def build(args: argparse.Namespace) -> int:
    from das_core.cache import DriftCache, validate_build_inputs, validate_clean_templates
    from das_core.encoder import ClapEncoder
    from das_core.prompts import CLEAN_TEMPLATE, DEFAULT_NOISE_PHRASES

    # everything that can be refused is refused before the model is loaded
    check_output_file(args.out)
    labels = read_lines_from(args.labels, "labels")
    phrases = (read_lines_from(args.noise_phrases, "noise phrases") if args.noise_phrases
               else list(DEFAULT_NOISE_PHRASES))
    if not labels:
        raise UsageError(f"labels file {args.labels} has no labels (only blank lines or # comments); "
                         "write one label per line")
    templates = None
    if args.clean_templates:
        if args.clean_template != CLEAN_TEMPLATE:
            raise UsageError("give either --clean-template or --clean-templates, not both")
        templates = read_lines_from(args.clean_templates, "clean templates")
    try:
        if templates is not None:
            validate_clean_templates(templates)
        validate_build_inputs(labels, phrases, templates[0] if templates else args.clean_template,
                              args.noisy_template, args.lam)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_device(args.device)
    start = time.monotonic()
    log.info("loading checkpoint %s", args.checkpoint)
    encoder = ClapEncoder.from_checkpoint(args.checkpoint, device=args.device, tokenizer_dir=args.tokenizer_dir)
    cache = DriftCache.build(encoder.embed_text, labels, phrases, clean_template=args.clean_template,
                             noisy_template=args.noisy_template, lam=args.lam, encoder_id=encoder.encoder_id,
                             encoder_name=encoder.name, clean_templates=templates)
    cache.save(args.out)
    zero = cache.zero_drift_labels
    print(f"drift cache written to {args.out}\n"
          f"  classes:           {len(cache.labels)}\n"
          f"  noise phrases:     {len(cache.noise_phrases)}\n"
          f"  clean templates:   {len(cache.clean_templates) or 1}\n"
          f"  text encodings:    {cache.n_text_encodings} (= {len(cache.labels)} x "
          f"({len(cache.clean_templates) or 1} + {len(cache.noise_phrases)}))\n"
          f"  lam:               {cache.lam}\n"
          f"  checkpoint:        {encoder.name} ({encoder.arch.describe()}) {encoder.encoder_id}\n"
          f"  cache fingerprint: {cache.fingerprint}\n"
          f"  without drift:     {', '.join(zero) if zero else 'none'}\n"
          f"  time:              {time.monotonic() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None, prog: str = "das build-cache") -> int:
    args = build_parser(prog).parse_args(argv)
    return run_main(prog, lambda: build(args), args)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.build_cache"))
