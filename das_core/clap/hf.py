"""Hugging Face ``ClapModel`` folders as das's second encoder backend.

What this module guarantees:

* **The folder's own model, tokenizer and feature settings.** The weights load
  strictly (a missing or unexpected tensor is refused, never initialised at
  random); the text goes through the folder's tokenizer after it is verified
  against the model; the mel settings come from its ``preprocessor_config.json`` (or the
  ``processor_config.json`` a ``ClapProcessor`` of transformers 5 saves).
* **Same features as ``ClapFeatureExtractor``, deterministically.** das hands
  the encoder 10 s windows (480 000 samples at 48 kHz), already repeat-padded
  and int16-round-tripped. For such a clip the extractor never crops; it
  computes a power mel spectrogram in dB, with librosa's (Slaney) filters for
  unfused models and torchaudio's (HTK) filters, repeated into the 4 fusion
  channels, for fused ones. ``LogMelFrontEnd`` computes exactly that in torch,
  batched, on the model's device, in float64 as the extractor does. The
  extractor's random choices (crops of longer clips, a random ``is_longer``
  flag when no clip of a fused batch is longer) are never used: ``is_longer``
  is always False, as laion-clap has it for clips of at most 10 s.
* **No network, no hang.** Everything is read with ``local_files_only`` inside
  ``das_core.clap.offline.hf_offline``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from das_core.audio.decode import SAMPLE_RATE, WINDOW_SAMPLES
from das_core.clap import checkpoint as ckpt
from das_core.clap.encoder import ROBERTA_PROBES, ROBERTA_VOCAB_SIZE
from das_core.clap.offline import hf_offline
from das_core.errors import CheckpointError, EncoderError, TokenizerError

FEATURE_CONFIGS = ("preprocessor_config.json", "processor_config.json")
# Round-trip probe: any faithful byte-level tokenizer gives this text back from its ids.
TOKENIZER_PROBE = "the sound of a dog barking at 3 a.m. near Zürich, then rain"


@dataclass
class HFClap:
    model: object               # transformers ClapModel, eval mode, float32, CPU
    arch: ckpt.Architecture
    tokenizer: object
    front_end: LogMelFrontEnd
    local_path: str
    encoder_id: str


def load_hf_clap(folder: str) -> HFClap:
    """Read, verify and load a saved ``ClapModel`` folder (see module docstring)."""
    config = ckpt.read_hf_config(folder)
    arch = ckpt.hf_architecture(config)
    tokenizer = load_tokenizer(folder, config.get("text_config") or {})
    front_end = LogMelFrontEnd.from_folder(folder, config.get("audio_config") or {})
    model = load_model(folder)
    return HFClap(model, arch, tokenizer, front_end, folder, ckpt.fingerprint(folder))


def load_model(folder: str):
    """The folder's ``ClapModel`` in float32 and eval mode; weights that do not fit the config are refused."""
    import torch
    from transformers import ClapModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()        # its missing-weights warning becomes our error below
    try:
        with hf_offline():
            model, info = ClapModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32,
                                                    output_loading_info=True)
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{folder}: could not load the Hugging Face ClapModel "
                                   f"({str(exc).splitlines()[0][:300]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    problems = [f"{kind} {sorted(str(x) for x in keys)[:8]}" for kind, keys in info.items()
                if kind != "error_msgs" and keys] + [str(m) for m in info.get("error_msgs") or []]
    if problems:
        raise CheckpointError(f"{folder}: the weights do not fit config.json: " + "; ".join(problems))
    return model.eval()


def load_tokenizer(folder: str, text_config: dict):
    """The folder's tokenizer, refused unless it fits the model's text tower (see ``verify_tokenizer``)."""
    from transformers import AutoTokenizer

    try:
        with hf_offline():
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise TokenizerError(f"{folder}: no usable tokenizer ({str(exc).splitlines()[0][:300]}). Save the "
                             f"model's tokenizer into the folder (ClapProcessor.save_pretrained or "
                             f"tokenizer.save_pretrained)") from None
    verify_tokenizer(tokenizer, text_config, folder)
    return tokenizer


def verify_tokenizer(tokenizer, text_config: dict, source: str) -> None:
    """Refuse a tokenizer whose vocabulary, padding id or round trip does not fit the text tower.

    Offline, transformers may build a stand-in tokenizer with a handful of
    tokens instead of failing; its ids would be garbage for the model.
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
    if vocab == ROBERTA_VOCAB_SIZE:     # the published CLAP models use roberta-base's vocabulary: check its ids
        for text, want in ROBERTA_PROBES.items():
            got = tokenizer(text)["input_ids"]
            if got != want:
                raise TokenizerError(f"the tokenizer in {source} encodes {text!r} as {got}, roberta-base (the "
                                     f"vocabulary of {ROBERTA_VOCAB_SIZE} tokens) gives {want}")


def max_text_tokens(tokenizer, text_config: dict) -> int:
    """Longest token sequence the text tower has positions for (RoBERTa numbers positions from pad id + 1)."""
    positions = int(text_config.get("max_position_embeddings", 514)) - int(text_config.get("pad_token_id", 1)) - 1
    return min(positions, int(getattr(tokenizer, "model_max_length", positions) or positions))


class LogMelFrontEnd:
    """``ClapFeatureExtractor``'s log-mel features of 10 s windows, in torch (see module docstring)."""

    def __init__(self, mel_filters, *, n_fft: int, hop_length: int, fusion: bool):
        import torch

        self.mel_filters = torch.as_tensor(mel_filters, dtype=torch.float64)   # [freqs, mels]
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.fusion = fusion
        self._on: dict = {}

    @classmethod
    def from_folder(cls, folder: str, audio_config: dict) -> LogMelFrontEnd:
        """Settings and filters of the folder's ``preprocessor_config.json``, checked against das's windows."""
        from transformers import ClapFeatureExtractor

        # preprocessor_config.json (hub folders), or processor_config.json with the feature extractor nested
        # inside (ClapProcessor.save_pretrained of transformers 5): ClapFeatureExtractor reads either
        if not any(os.path.isfile(os.path.join(folder, name)) for name in FEATURE_CONFIGS):
            raise CheckpointError(f"{folder} has no preprocessor_config.json or processor_config.json: save the "
                                       f"model's ClapFeatureExtractor (or ClapProcessor) into the folder; its mel "
                                       f"settings (e.g. frequency_min) are part of the model")
        with hf_offline():
            fe = ClapFeatureExtractor.from_pretrained(folder, local_files_only=True)
        mels = int(audio_config.get("num_mel_bins", 64))
        if fe.sampling_rate != SAMPLE_RATE or fe.nb_max_samples != WINDOW_SAMPLES or fe.feature_size != mels:
            raise EncoderError(f"{folder}: the feature extractor expects {fe.nb_max_samples} samples at "
                               f"{fe.sampling_rate} Hz and makes {fe.feature_size} mel bins; das feeds "
                               f"{WINDOW_SAMPLES} samples at {SAMPLE_RATE} Hz and the model wants {mels} bins")
        fusion = bool(audio_config.get("enable_fusion", False))
        # the extractor's choice: HTK filters (torchaudio's) on the fusion path, Slaney (librosa's) otherwise
        filters = fe.mel_filters if fusion else fe.mel_filters_slaney
        return cls(filters, n_fft=fe.fft_window_size, hop_length=fe.hop_length, fusion=fusion)

    def __call__(self, waves):
        """float ``[n, samples]`` -> float32 ``[n, 4 if fusion else 1, frames, mels]`` on the same device."""
        import torch

        key = str(waves.device)
        if key not in self._on:
            self._on[key] = (self.mel_filters.to(waves.device),
                             torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64, device=waves.device))
        filters, window = self._on[key]
        with torch.autocast(device_type=waves.device.type, enabled=False):
            spec = torch.stft(waves.to(torch.float64), n_fft=self.n_fft, hop_length=self.hop_length, window=window,
                              center=True, pad_mode="reflect", onesided=True, return_complex=True)
            # the extractor stores its float64 FFT as complex64 before taking the power in float64: so do we
            spec = spec.to(torch.complex64).to(torch.complex128)
            power = spec.real.square() + spec.imag.square()                     # [n, freqs, frames]
            mel = torch.matmul(power.transpose(1, 2), filters)                  # [n, frames, mels]
            db = (10.0 * torch.log10(torch.clamp(mel, min=1e-10))).to(torch.float32)
        return db.unsqueeze(1).expand(-1, 4 if self.fusion else 1, -1, -1).contiguous()


def audio_embeddings(model, features):
    """Projected (not yet normalised) audio embeddings of a batch of features, every clip "not longer" (fusion off)."""
    import torch

    longer = torch.zeros((features.shape[0], 1), dtype=torch.bool, device=features.device)
    pooled = model.audio_model(input_features=features, is_longer=longer).pooler_output
    return model.audio_projection(pooled)


def text_embeddings(model, tokens: dict):
    """Projected (not yet normalised) text embeddings, as ``ClapModel.get_text_features`` before its L2 norm."""
    pooled = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
    return model.text_projection(pooled)
