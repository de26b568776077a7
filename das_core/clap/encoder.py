"""The CLAP encoder: LAION-CLAP checkpoints, loaded offline-safely, embedding batches deterministically.

Two backends behind one ``ClapEncoder``: ``laion`` (a LAION-CLAP ``.pt``,
below) and ``hf`` (a saved ``transformers`` ``ClapModel`` folder, see
``das_core.clap.hf``); ``from_checkpoint`` picks by what the checkpoint is.

What this module guarantees for the laion backend:

* **Same numbers as laion-clap.** The network is laion-clap's own ``CLAP``
  module, built from its own model configs; audio goes through LAION's int16
  round trip and ``repeatpad`` (done upstream by ``das_core.audio.decode``), text
  through LAION's tokenisation; the result is L2-normalised as in
  ``get_audio_embedding`` / ``get_text_embedding``.
* **No network, no hang.** Importing ``laion_clap`` loads three Hugging Face
  tokenizers at import time, which blocks for minutes offline or (with
  transformers 5) silently yields a 5-token RoBERTa tokenizer. This module
  never imports the ``laion_clap`` package: it loads laion-clap's
  ``clap_module`` sub-package directly, within ``das_core.clap.offline.hf_offline``
  (``HF_HUB_OFFLINE=1`` unless the user has set it, for that block only:
  importing das changes no global state), builds a RoBERTa text tower from
  the configuration its checkpoint implies (never downloading ``roberta-base`` weights), and
  verifies any RoBERTa tokenizer against the real vocabulary before use.
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
import copy
import functools
import importlib.util
import os
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from das_core.audio.decode import SAMPLE_RATE, WINDOW_SAMPLES, dequantize_int16, int16_round_trip
from das_core.clap import checkpoint as ckpt
from das_core.clap.offline import hf_offline
from das_core.errors import CheckpointError, EncoderError, TokenizerError

PRECISIONS = ("fp32", "bf16", "fp16")
ROBERTA_VOCAB_SIZE = 50_265
# Token ids roberta-base gives (documented in transformers' RobertaTokenizer docstring).
ROBERTA_PROBES = {"Hello world": [0, 31414, 232, 2], " Hello world": [0, 20920, 232, 2]}
ROBERTA_BASE_CONFIG = {
    "vocab_size": ROBERTA_VOCAB_SIZE, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5,
    "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "gelu",
}
TEXT_CONTEXT = 77


DEFAULT_BATCH_SIZE = 16        # windows per forward pass of a label run (fixes its floating-point path)


@functools.cache
def laion() -> object:
    """laion-clap's ``clap_module`` package, loaded without running ``laion_clap/__init__``."""
    with hf_offline():
        return _load_clap_module()


def _load_clap_module() -> object:
    if "clap_module" in sys.modules:        # laion_clap itself imports it under this top-level name
        return sys.modules["clap_module"]
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError("laion-clap is not installed (pip install laion-clap==1.1.7)")
    path = os.path.join(spec.submodule_search_locations[0], "clap_module")
    mspec = importlib.util.spec_from_file_location("clap_module", os.path.join(path, "__init__.py"),
                                                   submodule_search_locations=[path])
    module = importlib.util.module_from_spec(mspec)
    sys.modules["clap_module"] = module
    try:
        mspec.loader.exec_module(module)
    except BaseException:
        del sys.modules["clap_module"]
        raise
    return module


_BUILD_LOCK = threading.Lock()


@contextlib.contextmanager
def _roberta_from_config(config: dict):
    """Within this block, laion-clap's ``RobertaModel.from_pretrained`` builds from ``config``, offline."""
    from transformers import RobertaConfig, RobertaModel

    class ConfiguredRoberta:
        @staticmethod
        def from_pretrained(*_args, **_kwargs):
            return RobertaModel(RobertaConfig(**config))

    module = laion().model
    original = module.RobertaModel
    module.RobertaModel = ConfiguredRoberta
    try:
        yield
    finally:
        module.RobertaModel = original


def build_model(arch: ckpt.Architecture, roberta_config: dict | None = None):
    """An (untrained) laion-clap ``CLAP`` module of the given architecture."""
    import torch

    cm = laion()
    cfg = copy.deepcopy(cm.factory._MODEL_CONFIGS[arch.audio])
    cfg["text_cfg"]["model_type"] = arch.text
    cfg["enable_fusion"] = arch.enable_fusion
    cfg["fusion_type"] = arch.fusion_type or "None"
    with _BUILD_LOCK, _roberta_from_config(roberta_config or ROBERTA_BASE_CONFIG), torch.device("cpu"):
        model = cm.model.CLAP(**cfg)
    return model.eval()


def load_roberta_tokenizer(tokenizer_dir: str | None = None):
    """roberta-base's tokenizer from ``tokenizer_dir``, ``$DAS_TOKENIZER_DIR`` or the Hugging Face cache, verified."""
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
    for text, ids in ROBERTA_PROBES.items():
        got = tok(text)["input_ids"]
        if got != ids:
            raise TokenizerError(f"the RoBERTa tokenizer loaded from {source!r} encodes {text!r} as {got}, "
                                 f"roberta-base gives {ids}. {how}")
    return tok


def _htk_mel_filters(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int):
    """Triangular HTK-scale mel filters without normalisation (torchaudio's ``melscale_fbanks`` defaults)."""
    import torch

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_pts = torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2)
    f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


class ClapEncoder:
    """Turns 48 kHz windows and prompt strings into unit-norm CLAP embeddings (laion or hf backend).

    ``front_end``: for the hf backend, the ``das_core.clap.hf.LogMelFrontEnd``
    that turns windows into the model's features (laion models compute their
    own).
    """

    def __init__(self, model, arch: ckpt.Architecture, *, encoder_id: str, name: str, device: str = "cpu",
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
        if ckpt.is_hf_folder(local):
            from das_core.clap.hf import load_hf_clap

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
        """As ``embed_audio`` for windows already quantised by ``das_core.audio.decode.quantize_int16``."""
        windows = self._check_windows(windows, dtype=np.int16)
        return self._embed_waveforms(dequantize_int16(windows))

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
        import torch.nn.functional as F

        out = np.empty((len(windows), self.dim), dtype=np.float32)
        with torch.inference_mode(), self._autocast(), quiet_meshgrid():
            for start in range(0, len(windows), self.max_batch_size):
                part = windows[start:start + self.max_batch_size]
                n = len(part)
                if self.batch_invariant and n < self.max_batch_size:
                    part = np.concatenate([part, np.zeros((self.max_batch_size - n, part.shape[1]), part.dtype)])
                emb = self._project_audio(torch.from_numpy(part).to(self.device))
                out[start:start + n] = F.normalize(emb[:n].float(), dim=-1).cpu().numpy()
        return out

    def _project_audio(self, chunk):
        """Projected, not yet normalised audio embeddings of one chunk of windows."""
        import torch

        if self.backend == "hf":
            from das_core.clap.hf import audio_embeddings

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
            fb = _htk_mel_filters(cfg.window_size // 2 + 1, cfg.fmin, cfg.fmax, cfg.mel_bins, cfg.sample_rate)
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
            from das_core.clap.hf import max_text_tokens

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
                from das_core.clap.hf import text_embeddings

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


@dataclass
class LoadedClap:
    model: object
    arch: ckpt.Architecture
    local_path: str
    encoder_id: str
    tokenizer: object = None          # what before_build returned: the RoBERTa tokenizer, or None


@contextlib.contextmanager
def quiet_meshgrid():
    """laion-clap's HTSAT calls ``torch.meshgrid`` without ``indexing=`` (when built and when run): a torch
    warning that no user of das can act on, silenced for the block only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
        yield


def load_clap(uri: str, before_build=None) -> LoadedClap:
    """Resolve, read, recognise and load a checkpoint into laion-clap's ``CLAP`` (eval mode, CPU).

    ``before_build(arch)`` runs once the architecture is known and before the
    (slow) model construction; its result (the tokenizer) is returned as ``tokenizer``. The
    encoder uses it to refuse a missing tokenizer early.
    """
    local = ckpt.resolve(uri)
    if ckpt.is_hf_folder(local):
        raise CheckpointError(f"{uri} is a Hugging Face ClapModel folder, not a LAION-CLAP .pt: load it "
                                   f"with ClapEncoder.from_checkpoint")
    state = ckpt.load_state_dict(local)
    arch = ckpt.detect(state)
    tokenizer = before_build(arch) if before_build else None
    with quiet_meshgrid():
        model = build_model(arch, ckpt.roberta_config(state) if arch.text == "roberta" else None)
    _load_weights(model, state, local)
    return LoadedClap(model, arch, local, ckpt.fingerprint(local), tokenizer)


_POSITION_IDS = "text_branch.embeddings.position_ids"


def _load_weights(model, state: dict, source: str) -> None:
    """Load ``state`` strictly, except for RoBERTa's ``position_ids`` buffer, which may or may not be saved."""
    own = model.state_dict()
    state = dict(state)
    if _POSITION_IDS in state and _POSITION_IDS not in own:
        del state[_POSITION_IDS]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != _POSITION_IDS]
    if missing or unexpected:
        def show(keys):
            return ", ".join(sorted(keys)[:8]) + (" ..." if len(keys) > 8 else "")
        raise CheckpointError(f"{source} does not fit the detected architecture: "
                                   f"missing {len(missing)} key(s) [{show(missing)}], "
                                   f"unexpected {len(unexpected)} key(s) [{show(unexpected)}]")
