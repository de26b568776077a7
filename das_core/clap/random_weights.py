"""Checkpoints with random weights and the real LAION-CLAP architecture, in LAION's and Hugging Face's formats.

The only source of weights for the tests, the benchmark and the offline
demo: the network code, the file format and the loading path are exactly
those of a published checkpoint, only the numbers are random. Labels made
with such weights are meaningless, and outputs made with them say so.
"""

from __future__ import annotations

import os
import shutil

from das_core.clap.formats import RANDOM_WEIGHTS_NAME, Architecture
from das_core.clap.laion import ROBERTA_BASE_CONFIG, build_model


def write_random_checkpoint(path: str, *, audio: str = "HTSAT-tiny", text: str = "transformer",
                            fusion: bool = False, seed: int = 0, include_position_ids: bool = True) -> str:
    """Write ``{"state_dict": {"module.<key>": tensor}}`` as LAION's training code saves it.

    ``text="roberta"`` builds a roberta-base-shaped tower from its configuration
    (no download); ``include_position_ids`` adds the ``position_ids`` buffer
    that checkpoints saved with transformers < 4.31 carry. ``fusion`` gives
    LAION's ``aff_2d`` fusion layers.
    """
    import torch

    arch = Architecture(audio, text, "aff_2d" if fusion else None)
    torch.manual_seed(seed)
    model = build_model(arch, ROBERTA_BASE_CONFIG if text == "roberta" else None)
    state = {f"module.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    if text == "roberta" and include_position_ids:
        state["module.text_branch.embeddings.position_ids"] = torch.arange(
            ROBERTA_BASE_CONFIG["max_position_embeddings"]).unsqueeze(0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save({"epoch": 0, "name": RANDOM_WEIGHTS_NAME, "state_dict": state}, tmp)
    os.replace(tmp, path)
    return path


# Sentences the test tokenizer's byte-level BPE is trained on: prompt-like text, so merges are real.
_TOKENIZER_TEXT = [
    "sound of dog bark", "sound of siren with traffic noise", "This is a sound of jackhammer.",
    "car horn with street noise", "children playing with people talking in the background",
    "air conditioner with wind noise", "engine idling with engine hum", "gun shot with city ambience",
    "drilling with background music", "street music with crowd noise",
]
# HF HTSAT sizes: (patch_embeds_hidden_size, depths, heads); the hidden size doubles at each stage.
HF_AUDIO_SIZES = {
    "HTSAT-tiny": (96, [2, 2, 6, 2], [4, 8, 16, 32]),
    "test-tiny": (16, [1, 1], [2, 2]),
}


def byte_level_tokenizer(vocab_size: int = 400):
    """A RoBERTa-style byte-level BPE (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3) trained on prompt text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_TOKENIZER_TEXT, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>",
                                   model_max_length=512)


def write_random_hf_checkpoint(folder: str, *, audio: str = "test-tiny", fusion: bool = False, seed: int = 0,
                               text_layers: int = 1, text_hidden: int = 32, projection_dim: int = 32,
                               processor: bool = False) -> str:
    """Save a ``transformers`` ``ClapModel`` with random weights, its tokenizer and feature extractor in ``folder``.

    ``audio``: an ``HF_AUDIO_SIZES`` key (``HTSAT-tiny`` is laion-clap's
    HTSAT-tiny). config.json records ``das_weights: random``, so outputs made
    with it say that the weights are random. The feature extractor has
    laion-clap's mel settings (48 kHz, 10 s, 64 bins, 50 - 14 000 Hz). ``processor``: save tokenizer and
    feature extractor as one ``ClapProcessor`` (transformers 5 writes ``processor_config.json``).
    """
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    from das_core.clap.formats import HF_RANDOM_WEIGHTS_KEY

    width, depths, heads = HF_AUDIO_SIZES[audio]
    tokenizer = byte_level_tokenizer()
    audio_config = {"patch_embeds_hidden_size": width, "hidden_size": width * 2 ** (len(depths) - 1),
                    "depths": depths, "num_attention_heads": heads, "window_size": 8, "spec_size": 256,
                    "num_mel_bins": 64, "enable_fusion": fusion}
    text_config = {"vocab_size": len(tokenizer), "hidden_size": text_hidden, "num_hidden_layers": text_layers,
                   "num_attention_heads": max(1, text_hidden // 16), "intermediate_size": 2 * text_hidden,
                   "max_position_embeddings": 80, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
    config = ClapConfig(text_config=text_config, audio_config=audio_config, projection_dim=projection_dim,
                        **{HF_RANDOM_WEIGHTS_KEY: "random"})
    torch.manual_seed(seed)
    model = ClapModel(config).eval()
    with torch.no_grad():       # transformers zero-initialises these; random values exercise them too
        for name, param in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                param.normal_(0.0, 0.02)
    partial = folder.rstrip("/") + ".partial"     # saved aside and renamed: a folder is never half written
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    extractor = ClapFeatureExtractor(frequency_min=50, frequency_max=14_000)
    if processor:
        ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(partial)
    else:
        tokenizer.save_pretrained(partial)
        extractor.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return folder
