"""Tokenizers the text towers need, refused unless they are the real ones.

Offline, transformers 5 may build a stand-in RoBERTa tokenizer of a handful
of tokens instead of failing; its ids would be garbage for the model. Every
tokenizer das uses is therefore checked before use: its vocabulary size, and
for roberta-base's vocabulary (the published CLAP models' text tower) the ids
of two probe texts (``roberta_probe_mismatch``, the one probe check of both
backends). ``load_roberta_tokenizer`` serves LAION checkpoints with a RoBERTa
tower; ``verify_tokenizer`` checks a Hugging Face ``ClapModel`` folder's own.
"""

from __future__ import annotations

import os

from das_core.clap.offline import hf_offline
from das_core.errors import TokenizerError

ROBERTA_VOCAB_SIZE = 50_265
# Token ids roberta-base gives (documented in transformers' RobertaTokenizer docstring).
ROBERTA_PROBES = {"Hello world": [0, 31414, 232, 2], " Hello world": [0, 20920, 232, 2]}
# Round-trip probe: any faithful byte-level tokenizer gives this text back from its ids.
TOKENIZER_PROBE = "the sound of a dog barking at 3 a.m. near Zürich, then rain"


def roberta_probe_mismatch(tokenizer) -> tuple[str, list[int], list[int]] | None:
    """The first of ``ROBERTA_PROBES`` that ``tokenizer`` encodes otherwise than roberta-base, as ``(text, got,
    want)``; None when it gives roberta-base's ids for every probe."""
    for text, want in ROBERTA_PROBES.items():
        got = tokenizer(text)["input_ids"]
        if got != want:
            return text, got, want
    return None


def load_roberta_tokenizer(tokenizer_dir: str | None = None):
    """roberta-base's tokenizer from ``tokenizer_dir``, ``$DAS_TOKENIZER_DIR`` or the Hugging Face cache, verified.

    Raises ``TokenizerError`` (saying how to provide the files) when it cannot be loaded offline, has other than
    roberta-base's 50 265 tokens, or encodes a probe text otherwise.
    """
    from transformers import RobertaTokenizer

    source = tokenizer_dir or os.environ.get("DAS_TOKENIZER_DIR") or "roberta-base"
    how = ("Provide roberta-base's tokenizer files (vocab.json and merges.txt) with --tokenizer-dir DIR or "
           "DAS_TOKENIZER_DIR=DIR, or fill the Hugging Face cache on a machine with network "
           "(python -c \"from transformers import AutoTokenizer; AutoTokenizer.from_pretrained('roberta-base')\") "
           "and copy ~/.cache/huggingface to this machine.")
    try:
        with hf_offline() as offline:
            tok = RobertaTokenizer.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError, TypeError) as exc:
        raise TokenizerError(f"this checkpoint's RoBERTa text tower needs the roberta-base tokenizer, which "
                             f"could not be loaded from {source!r} ({exc}). {how}") from None
    if len(tok) != ROBERTA_VOCAB_SIZE:
        raise TokenizerError(f"the RoBERTa tokenizer loaded from {source!r} has {len(tok)} tokens, not "
                             f"{ROBERTA_VOCAB_SIZE}: it is not roberta-base's (transformers builds such a "
                             f"stand-in when the real files are missing offline). {how}")
    mismatch = roberta_probe_mismatch(tok)
    if mismatch:
        text, got, ids = mismatch
        raise TokenizerError(f"the RoBERTa tokenizer loaded from {source!r} encodes {text!r} as {got}, "
                             f"roberta-base gives {ids}. {how}")
    return tok


def verify_tokenizer(tokenizer, text_config: dict, source: str) -> None:
    """Refuse (``TokenizerError``) a tokenizer whose vocabulary, padding id or round trip does not fit the text
    tower that ``text_config`` (a ``ClapModel``'s ``text_config``) describes; ``source`` names it in messages.
    """
    vocab = int(text_config.get("vocab_size", ROBERTA_VOCAB_SIZE))
    pad = text_config.get("pad_token_id", 1)
    if len(tokenizer) != vocab:
        raise TokenizerError(f"the tokenizer in {source} has {len(tokenizer)} tokens, but the model's text tower "
                             f"has a vocabulary of {vocab} (text_config.vocab_size): it is not this model's "
                             f"tokenizer")
    if tokenizer.pad_token_id != pad:
        raise TokenizerError(f"the tokenizer in {source} pads with id {tokenizer.pad_token_id}, the model's text "
                             f"tower with {pad} (text_config.pad_token_id)")
    ids = tokenizer(TOKENIZER_PROBE)["input_ids"]
    back = tokenizer.decode(ids, skip_special_tokens=True).strip()
    if back != TOKENIZER_PROBE or tokenizer.unk_token_id in ids or not all(0 <= i < vocab for i in ids):
        raise TokenizerError(f"the tokenizer in {source} fails a round trip: {TOKENIZER_PROBE!r} -> {ids[:24]} "
                             f"-> {back!r}")
    # the published CLAP models use roberta-base's vocabulary: check its ids
    mismatch = roberta_probe_mismatch(tokenizer) if vocab == ROBERTA_VOCAB_SIZE else None
    if mismatch:
        text, got, want = mismatch
        raise TokenizerError(f"the tokenizer in {source} encodes {text!r} as {got}, roberta-base (the "
                             f"vocabulary of {ROBERTA_VOCAB_SIZE} tokens) gives {want}")


def max_text_tokens(tokenizer, text_config: dict) -> int:
    """Longest token sequence the text tower has positions for (RoBERTa numbers positions from pad id + 1)."""
    positions = int(text_config.get("max_position_embeddings", 514)) - int(text_config.get("pad_token_id", 1)) - 1
    return min(positions, int(getattr(tokenizer, "model_max_length", positions) or positions))
