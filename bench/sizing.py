"""A GPU node on paper and the CPU cores one GPU needs, from the bench's per-core decode rates.

A node decodes on its CPU cores and embeds on its GPU, so it moves min(cores x per-core decode rate, GPU
rate) windows/s; one GPU stays busy with GPU rate / per-core decode rate cores decoding for it. The per-core
rates are ``decode_windows_per_core_<fmt>`` of a ``bench.run``; the GPU rate is the bf16 encoder rate that
``python -m bench.gpu --record`` measured on a CUDA device, or, where none was recorded, HTSAT-tiny's FLOP
bound on an H100 (``paper_gpu_rate``).
"""

from __future__ import annotations

from dataclasses import dataclass

FORMATS = ("wav", "flac", "ogg", "mp3", "m4a")
HTSAT_TINY_GFLOP_PER_WINDOW = 14.1      # one 10 s window through HTSAT-tiny (README, "A GPU node, on paper")
H100_BF16_DENSE_TFLOPS = 989.0          # H100 SXM, dense bf16 peak
PAPER_UTILISATION = 0.4                 # share of the peak a transformer of this size reaches, on paper
NODE_CORES = 16


@dataclass(frozen=True)
class GpuRate:
    """Windows/s one GPU embeds, and where the figure comes from (a measurement naming the card, or paper)."""

    windows_per_s: float
    source: str


def paper_gpu_rate() -> GpuRate:
    """HTSAT-tiny on an H100 SXM at ``PAPER_UTILISATION`` of its dense bf16 peak (a bound, not a measurement)."""
    rate = H100_BF16_DENSE_TFLOPS * 1e12 * PAPER_UTILISATION / (HTSAT_TINY_GFLOP_PER_WINDOW * 1e9)
    return GpuRate(rate, f"on paper: H100 SXM {H100_BF16_DENSE_TFLOPS:g} TFLOP/s bf16 x {PAPER_UTILISATION:g} / "
                         f"{HTSAT_TINY_GFLOP_PER_WINDOW:g} GFLOP per window")


def gpu_rate(history: list[dict]) -> GpuRate:
    """The bf16 encoder rate of the last ``bench.gpu`` record made on a CUDA device in ``history`` (the records
    of bench/results.json), else ``paper_gpu_rate()``."""
    for record in reversed(history):
        gpu = record.get("gpu") or {}
        if gpu.get("cuda") and gpu.get("encoder_windows_per_s", {}).get("bf16"):
            return GpuRate(float(gpu["encoder_windows_per_s"]["bf16"]),
                           f"measured: bench.gpu on {gpu['device']}, bf16, {gpu.get('checkpoint', 'checkpoint ?')}"
                           f" ({record.get('when', '?')})")
    return paper_gpu_rate()


def per_core_rates(results: dict) -> dict[str, float]:
    """``decode_windows_per_core_<fmt>`` of a run's results, by format (the formats it measured)."""
    return {fmt: float(results[f"decode_windows_per_core_{fmt}"]) for fmt in FORMATS
            if results.get(f"decode_windows_per_core_{fmt}")}


def node_rows(per_core: dict[str, float], gpu: GpuRate, cores: int = NODE_CORES) -> list[dict]:
    """Per format, a node of ``cores`` CPU cores and one GPU: ``decode`` = cores x per-core rate, ``node`` =
    min(decode, GPU rate) windows/s, and which side bounds it."""
    rows = []
    for fmt, rate in per_core.items():
        decode = cores * rate
        rows.append({"format": fmt, "per_core": rate, "decode": decode, "node": min(decode, gpu.windows_per_s),
                     "bound": "decode" if decode < gpu.windows_per_s else "GPU"})
    return rows


def cores_per_gpu(per_core: dict[str, float], gpu: GpuRate) -> dict[str, float]:
    """Per format, the CPU cores decoding that keep one GPU busy: GPU windows/s / per-core decode windows/s."""
    return {fmt: gpu.windows_per_s / rate for fmt, rate in per_core.items()}


def sizing_text(results: dict, gpu: GpuRate, cores: int = NODE_CORES) -> str:
    """The projected GPU-node table and the cores-per-GPU table, with their arithmetic, as printed text."""
    per_core = per_core_rates(results)
    if not per_core:
        return "GPU node on paper: no decode_windows_per_core_<fmt> in this run"
    g = gpu.windows_per_s
    lines = [f"GPU rate: {g:,.0f} windows/s ({gpu.source})", "",
             f"projected GPU node: {cores} cores + 1 GPU, windows/s = min({cores} x per-core decode, {g:,.0f})",
             f"{'format':8s} {'per core':>9s} {'decode':>10s} {'node':>10s}  bound"]
    for row in node_rows(per_core, gpu, cores):
        lines.append(f"{row['format']:8s} {row['per_core']:9.1f} {row['decode']:10,.0f} {row['node']:10,.0f}  "
                     f"{row['bound']}")
    lines += ["", "CPU cores one GPU needs = GPU windows/s / per-core decode windows/s"]
    for fmt, need in cores_per_gpu(per_core, gpu).items():
        lines.append(f"{fmt:8s} {g:,.0f} / {per_core[fmt]:.1f} = {need:,.0f} cores")
    return "\n".join(lines)
