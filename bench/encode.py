"""The encoder alone: clips/s per batch size, the Hugging Face backend against LAION's, the naive script,
and the GPU precisions where a GPU is present."""

from __future__ import annotations

import gc
import os
import time

import numpy as np

from bench.common import Sizes, best_of, log
from das_core.audio.windows import WINDOW_SAMPLES


def bench_encoder(ckpt: str, sizes: Sizes, threads: int) -> dict:
    """Audio clips/s of the encoder alone at each of ``sizes.batch_sizes`` (best of interleaved rounds), the best
    batch size, and the profile of its CPU time by operator."""
    import torch

    from das_core.clap.encoder import ClapEncoder

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    windows = (0.1 * rng.standard_normal((max(sizes.batch_sizes), WINDOW_SAMPLES))).astype(np.float32)
    # Rounds interleave the batch sizes and each keeps its best round: the machine's speed drifts (it is
    # shared), and the pipeline benchmark runs at the batch size chosen here.
    encoders = {bs: ClapEncoder.from_checkpoint(ckpt, max_batch_size=bs, batch_invariant=True)
                for bs in sizes.batch_sizes}
    per_bs = dict.fromkeys(sizes.batch_sizes, 0.0)
    for _ in range(sizes.encoder_rounds):
        for bs, enc in encoders.items():
            batch = windows[:bs]
            enc.embed_audio(batch)                          # warm-up
            calls = max(1, sizes.encoder_windows // (2 * bs))
            t = time.perf_counter()
            for _ in range(calls):
                enc.embed_audio(batch)
            per_bs[bs] = max(per_bs[bs], calls * bs / (time.perf_counter() - t))
    for bs, rate in per_bs.items():
        log(f"encoder batch {bs:>2}: {rate:.2f} clips/s (best of {sizes.encoder_rounds} rounds)")
    del encoders
    gc.collect()
    best = max(per_bs, key=per_bs.get)
    return {"encoder_clips_per_s": per_bs[best], "encoder_best_batch_size": best,
            "encoder_profile_shares": profile_encoder(ckpt, windows[:4]),
            "encoder_clips_per_s_by_batch": {str(k): v for k, v in per_bs.items()}, "torch_threads": threads}


def profile_encoder(ckpt: str, windows: np.ndarray) -> dict[str, float]:
    """Share of the encoder's CPU time per operator (torch.profiler, self time), the largest eight."""
    from torch.profiler import ProfilerActivity, profile

    from das_core.clap.encoder import ClapEncoder

    enc = ClapEncoder.from_checkpoint(ckpt, max_batch_size=len(windows), batch_invariant=True)
    enc.embed_audio(windows)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        enc.embed_audio(windows)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return {e.key: e.self_cpu_time_total / total for e in top}


def bench_hf_encoder(ckpt: str, work: str, sizes: Sizes, threads: int, batch_size: int) -> dict:
    """Audio clips/s of the hf backend against the laion backend: the same unfused HTSAT-tiny audio tower
    (patch width 96, depths 2-2-6-2, projection to 512), random weights, the same batch size, batch-invariant
    mode, timed alternately in this run. Text towers differ (not timed). The hf figure includes das's float64
    log-mel front end, whose share is reported separately."""
    import torch

    from das_core.clap.encoder import ClapEncoder
    from das_core.clap.random_weights import write_random_hf_checkpoint

    folder = os.path.join(work, "HTSAT-tiny-hf-random")
    if not os.path.isdir(folder):
        write_random_hf_checkpoint(folder, audio="HTSAT-tiny", projection_dim=512)
    torch.set_num_threads(threads)
    windows = (0.1 * np.random.default_rng(1).standard_normal((batch_size, WINDOW_SAMPLES))).astype(np.float32)
    encoders = {name: ClapEncoder.from_checkpoint(uri, max_batch_size=batch_size, batch_invariant=True)
                for name, uri in (("laion", ckpt), ("hf", folder))}
    calls = max(1, sizes.encoder_windows // batch_size)
    rates: dict[str, float] = {}
    for enc in encoders.values():
        enc.embed_audio(windows)                                    # warm-up
    for _ in range(2):                                              # alternate: both see the same load
        for name, enc in encoders.items():
            wall = best_of(lambda enc=enc: [enc.embed_audio(windows) for _ in range(calls)], 1)
            rates[name] = max(rates.get(name, 0.0), calls * batch_size / wall)
    hf = encoders["hf"]
    with torch.inference_mode():
        front_s = best_of(lambda: hf.front_end(torch.from_numpy(windows).to(hf.device)), 2)
    log(f"hf backend {rates['hf']:.2f} clips/s, laion {rates['laion']:.2f} clips/s (HTSAT-tiny, batch {batch_size})")
    return {"hf_encoder_clips_per_s": rates["hf"], "laion_encoder_clips_per_s_same_batch": rates["laion"],
            "hf_over_laion_encoder": rates["hf"] / rates["laion"], "hf_batch_size": batch_size,
            "hf_front_end_share": front_s / (batch_size / rates["hf"])}


def bench_naive(ckpt: str, paths: list[str], threads: int) -> dict:
    """The usual script: a per-file loop of librosa.load(sr=48000) + laion-clap's CLAP_Module."""
    import librosa
    import torch

    from das_core.clap.offline import hf_offline

    torch.set_num_threads(threads)
    with hf_offline():      # laion_clap loads tokenizers at import: local-only, or it hangs retrying the network
        import laion_clap

        model = laion_clap.CLAP_Module(enable_fusion=False, amodel="HTSAT-tiny", tmodel="transformer")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    # CLAP_Module.load_ckpt deletes a position_ids key these checkpoints do not have: load directly.
    model.model.load_state_dict({k[len("module."):]: v for k, v in state.items()})
    y, _ = librosa.load(paths[0], sr=48000)
    model.get_audio_embedding_from_data(x=y[None, :], use_tensor=False)     # warm-up
    load_s = 0.0
    t = time.perf_counter()
    for path in paths:
        t_load = time.perf_counter()
        y, _ = librosa.load(path, sr=48000)
        load_s += time.perf_counter() - t_load
        model.get_audio_embedding_from_data(x=y[None, :], use_tensor=False)
    wall = time.perf_counter() - t
    # What a pipeline can hide at best on the same cores: the loading; the model's share stays.
    return {"naive_clips_per_s": len(paths) / wall, "naive_wall_s": wall, "naive_load_share": load_s / wall,
            "pipeline_over_naive_ceiling": wall / (wall - load_s)}


def bench_gpu(ckpt: str) -> dict:
    """Clips/s on CUDA in fp32, bf16 and fp16, and each precision's largest cosine deviation from fp32; a note
    instead where no CUDA device is present."""
    import torch

    from das_core.clap.encoder import ClapEncoder

    if not torch.cuda.is_available():
        return {"gpu_clips_per_s": None, "gpu_note": "no CUDA device on this machine"}
    rng = np.random.default_rng(0)
    windows = (0.1 * rng.standard_normal((64, WINDOW_SAMPLES))).astype(np.float32)
    ref = None
    out, dev = {}, {}
    for precision in ("fp32", "bf16", "fp16"):
        enc = ClapEncoder.from_checkpoint(ckpt, device="cuda", precision=precision, max_batch_size=64)
        enc.embed_audio(windows)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            emb = enc.embed_audio(windows)
        torch.cuda.synchronize()
        out[precision] = 5 * len(windows) / (time.perf_counter() - t)
        ref = emb if ref is None else ref
        dev[precision] = float(np.max(1 - np.sum(emb * ref, axis=1)))
    return {"gpu_clips_per_s": out, "gpu_cosine_deviation_from_fp32": dev}
