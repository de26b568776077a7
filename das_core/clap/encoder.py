"""The CLAP encoder: one ``ClapEncoder`` over both backends, embedding batches deterministically.

Two backends: ``laion`` (a LAION-CLAP ``.pt``, loaded by
``das_core.clap.laion``) and ``hf`` (a saved ``transformers`` ``ClapModel``
folder, ``das_core.clap.hf``); ``from_checkpoint`` picks by what the
checkpoint is. What the encoder guarantees:

* **Same numbers as the reference.** Audio goes through LAION's int16 round
  trip and ``repeatpad`` (done upstream by ``das_core.audio.windows``), text
  through LAION's tokenisation (or the folder's tokenizer); the result is
  L2-normalised as in ``get_audio_embedding`` / ``get_text_embedding``. Any
  RoBERTa tokenizer is verified against the real vocabulary before use
  (``das_core.clap.tokenizer``).
* **Deterministic.** Inputs are exactly 10 s (480 000 samples), so the
  non-fusion path never reaches LAION's random crop. Fusion checkpoints get
  every window as a "not longer than 10 s" clip: the global mel and the
  three local views are the same window, as laion-clap does for clips of at
  most 10 s, and the fusion branch is inactive. Inference runs under
  ``torch.inference_mode()`` with the model in eval mode.
* **Bounded memory.** Batches are split into chunks of at most
  ``max_batch_size`` windows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np

from das_core.audio.windows import SAMPLE_RATE, WINDOW_SAMPLES, dequantize_int16, int16_round_trip
from das_core.clap import checkpoint as ckpt
from das_core.clap.formats import Architecture, is_hf_folder
from das_core.clap.hf import audio_embeddings, load_hf_clap, text_embeddings
from das_core.clap.laion import htk_mel_filters, laion, load_clap, quiet_meshgrid
from das_core.clap.tokenizer import load_roberta_tokenizer, max_text_tokens
from das_core.errors import EncoderError, TokenizerError

PRECISIONS = ("fp32", "bf16", "fp16")
TEXT_CONTEXT = 77
DEFAULT_BATCH_SIZE = 16        # windows per forward pass of a label run (fixes its floating-point path)


class ClapEncoder:
    """Turns 48 kHz windows and prompt strings into unit-norm CLAP embeddings (laion or hf backend).

    ``front_end``: for the hf backend, the ``das_core.clap.hf.LogMelFrontEnd``
    that turns windows into the model's features (laion models compute their
    own).
    """

    def __init__(self, model, arch: Architecture, *, encoder_id: str, name: str, device: str = "cpu",
                 precision: str = "fp32", tokenizer=None, max_batch_size: int | None = None,
                 batch_invariant: bool = False, front_end=None):
        import torch

        if precision not in PRECISIONS:
            raise EncoderError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise EncoderError("device 'cuda' requested but torch sees no CUDA GPU; use --device cpu "
                               "(or --num-gpus 0)")
        if dev.type not in ("cpu", "cuda"):
            raise EncoderError(f"device must be cpu or cuda[:N], got {device!r}")
        self.model = model.to(dev).eval()
        self.arch = arch
        self.encoder_id = encoder_id
        self.name = name
        self.device = dev
        self.precision = precision
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size or (64 if dev.type == "cuda" else 16)
        self.batch_invariant = batch_invariant
        self.backend = arch.backend
        if self.backend == "hf":
            if front_end is None or tokenizer is None:
                raise EncoderError("the hf backend needs the folder's feature front end and tokenizer")
            self.dim = int(self.model.audio_projection.linear2.out_features)
        else:
            self.dim = int(self.model.audio_projection[-1].out_features)
        self.front_end = front_end
        self._mel_fb = None

    @property
    def logit_scale(self) -> float:
        """The audio-to-text logit scale CLAP was trained with (``exp`` of the learned ``logit_scale_a``)."""
        return float(self.model.logit_scale_a.detach().float().exp().cpu())

    @classmethod
    def from_checkpoint(cls, uri: str, device: str = "cpu", precision: str = "fp32", *,
                        tokenizer_dir: str | None = None, max_batch_size: int | None = None,
                        batch_invariant: bool = False) -> ClapEncoder:
        """Load a checkpoint by path, ``s3://`` URI, published name or hub id; backend and architecture are detected.

        A ``.pt`` file is a LAION-CLAP checkpoint; a folder with a ``config.json``
        of ``model_type`` ``"clap"`` is a Hugging Face ``ClapModel`` (its own
        tokenizer is used; ``tokenizer_dir`` only serves LAION RoBERTa towers).

        ``batch_invariant``: run every forward pass on exactly ``max_batch_size``
        windows (zero-padded), so that a window's embedding is bit-identical
        whatever shares its batch. Kernels pick their summation order by
        shape; with one shape, reruns and resumed runs reproduce every bit.
        """
        local = ckpt.resolve(uri)
        if is_hf_folder(local):
            hf = load_hf_clap(local)
            # the name (recorded in drift caches next to the fingerprint) says which backend made the embeddings
            return cls(hf.model, hf.arch, encoder_id=hf.encoder_id, name="hf:" + ckpt.display_name(uri), device=device,
                       precision=precision, tokenizer=hf.tokenizer, max_batch_size=max_batch_size,
                       batch_invariant=batch_invariant, front_end=hf.front_end)
        loaded = load_clap(local, before_build=lambda arch: (
            load_roberta_tokenizer(tokenizer_dir) if arch.text == "roberta" else None))
        return cls(loaded.model, loaded.arch, encoder_id=loaded.encoder_id, name=ckpt.display_name(uri),
                   device=device, precision=precision, tokenizer=loaded.tokenizer, max_batch_size=max_batch_size,
                   batch_invariant=batch_invariant)

    # ---------------------------------------------------------------- audio
    def embed_audio(self, windows: np.ndarray) -> np.ndarray:
        """float32 ``[n, 480000]`` at 48 kHz -> unit-norm float32 ``[n, dim]``, after LAION's int16 round trip."""
        windows = self._check_windows(windows)
        return self._embed_waveforms(int16_round_trip(windows))

    def embed_audio_int16(self, windows: np.ndarray) -> np.ndarray:
        """As ``embed_audio`` for windows already quantised by ``das_core.audio.windows.quantize_int16``."""
        windows = self._check_windows(windows, dtype=np.int16)
        return self._embed_waveforms(dequantize_int16(windows))

    def embed_prepared(self, windows) -> np.ndarray:
        """float32 tensor ``[n, 480000]`` already on this encoder's device, 48 kHz, repeat-padded and through
        LAION's int16 round trip (``das_core.audio.frontend``) -> unit-norm float32 ``[n, dim]``. The same
        batches (``batch_invariant``) and numbers as ``embed_audio_int16`` of the same windows."""
        if windows.ndim != 2 or windows.shape[1] != WINDOW_SAMPLES:
            raise EncoderError(f"audio windows must be [n, {WINDOW_SAMPLES}] at {SAMPLE_RATE} Hz, "
                               f"got {list(windows.shape)}")
        return self._embed_tensor(windows)

    def _check_windows(self, windows: np.ndarray, dtype=np.float32) -> np.ndarray:
        windows = np.asarray(windows)
        if windows.ndim == 1:
            windows = windows[None, :]
        if windows.ndim != 2 or windows.shape[1] != WINDOW_SAMPLES:
            raise EncoderError(f"audio windows must be [n, {WINDOW_SAMPLES}] at {SAMPLE_RATE} Hz, "
                               f"got {list(windows.shape)}")
        return np.ascontiguousarray(windows, dtype=dtype)

    def _autocast(self):
        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _embed_waveforms(self, windows: np.ndarray) -> np.ndarray:
        import torch

        return self._embed_tensor(torch.from_numpy(windows))

    def _embed_tensor(self, windows) -> np.ndarray:
        """Embed a float32 tensor of windows (on any device) in batches of ``max_batch_size``."""
        import torch
        import torch.nn.functional as F

        out = np.empty((len(windows), self.dim), dtype=np.float32)
        with torch.inference_mode(), self._autocast(), quiet_meshgrid():
            for start in range(0, len(windows), self.max_batch_size):
                part = windows[start:start + self.max_batch_size]
                n = len(part)
                if self.batch_invariant and n < self.max_batch_size:
                    part = torch.cat([part, part.new_zeros((self.max_batch_size - n, part.shape[1]))])
                emb = self._project_audio(part.to(self.device))
                out[start:start + n] = F.normalize(emb[:n].float(), dim=-1).cpu().numpy()
        return out

    def _project_audio(self, chunk):
        """Projected, not yet normalised audio embeddings of one chunk of windows."""
        import torch

        if self.backend == "hf":
            return audio_embeddings(self.model, self.front_end(chunk))
        longer = torch.zeros((len(chunk), 1), dtype=torch.bool, device=self.device)
        if self.arch.enable_fusion:
            mel = self._log_mel(chunk)
            batch = {"mel_fusion": mel.unsqueeze(1).expand(-1, 4, -1, -1).contiguous(), "longer": longer}
        else:
            batch = {"waveform": chunk, "longer": longer}
        emb = self.model.encode_audio(batch, device=self.device)["embedding"]
        return self.model.audio_projection(emb)

    def _log_mel(self, wave):
        """laion-clap's ``get_mel`` for fusion inputs: power mel spectrogram in dB, ``[n, frames, mel_bins]``."""
        import torch

        cfg = self.model.audio_cfg
        if self._mel_fb is None:
            fb = htk_mel_filters(cfg.window_size // 2 + 1, cfg.fmin, cfg.fmax, cfg.mel_bins, cfg.sample_rate)
            self._mel_fb = (fb.to(self.device), torch.hann_window(cfg.window_size, device=self.device))
        fb, window = self._mel_fb
        spec = torch.stft(wave.float(), n_fft=cfg.window_size, hop_length=cfg.hop_size, win_length=cfg.window_size,
                          window=window, center=True, pad_mode="reflect", normalized=False, onesided=True,
                          return_complex=True).abs().pow(2.0)             # [n, freqs, frames]
        mel = torch.matmul(spec.transpose(1, 2), fb)                      # [n, frames, mels]
        return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))

    # ----------------------------------------------------------------- text
    def tokenize(self, texts: Sequence[str]):
        """Token inputs for the text tower: LAION's CLIP BPE for ``transformer``, roberta-base's (or, hf
        backend, the folder's own, padded to the longest prompt, cut at the tower's positions) otherwise."""
        if self.backend == "hf":
            text_config = self.model.config.text_config.to_dict()
            enc = self.tokenizer(list(texts), padding="longest", truncation=True, return_tensors="pt",
                                 max_length=max_text_tokens(self.tokenizer, text_config))
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if self.arch.text == "transformer":
            return laion().tokenize(list(texts), context_length=TEXT_CONTEXT)
        if self.tokenizer is None:
            raise TokenizerError("this encoder has a RoBERTa text tower but no tokenizer was loaded")
        # LAION pads to 77; padding is masked out, so padding to the batch's longest prompt gives the same
        # embeddings (to float rounding) at a fraction of the cost
        enc = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=TEXT_CONTEXT,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def embed_tokens(self, tokens) -> np.ndarray:
        """Unit-norm text embeddings for already tokenised input (one batch)."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode(), self._autocast():
            if self.backend == "hf":
                emb = text_embeddings(self.model, {k: v.to(self.device) for k, v in tokens.items()})
            elif isinstance(tokens, dict):
                tokens = {k: v.to(self.device) for k, v in tokens.items()}
                emb = self.model.encode_text(tokens, device=self.device)
            else:
                emb = self._encode_clip_tokens(tokens.to(self.device))
            return F.normalize(emb.float(), dim=-1).cpu().numpy()

    def _encode_clip_tokens(self, tokens):
        """laion-clap's ``encode_text`` for the ``transformer`` tower, on the prefix that matters.

        The tower is causal and reads its output at the end-of-text token (the
        highest id), so positions after the batch's last end-of-text token
        cannot change the result: they are cut off. Prompts are a few tokens
        long, so this skips most of the 77-token context (the parity tests
        compare with laion-clap's full-length ``encode_text``).
        """
        import torch

        m = self.model
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1
        x = m.token_embedding(tokens[:, :length]) + m.positional_embedding[:length]
        x = m.text_branch(x.permute(1, 0, 2), attn_mask=m.attn_mask[:length, :length]).permute(1, 0, 2)
        x = m.ln_final(x)
        return m.text_projection(x[torch.arange(x.shape[0], device=x.device), eot])

    def embed_text(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-norm float32 ``[n, dim]`` for ``texts``, encoded in batches of ``batch_size``."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        for start in range(0, len(texts), batch_size):
            parts.append(self.embed_tokens(self.tokenize(texts[start:start + batch_size])))
        return np.concatenate(parts).astype(np.float32)
