"""``python -m bench.gpu`` (``make gpu-check``): what one GPU does for das, in one table, in under 5 minutes.

    encoder windows/s in fp32 and bf16   ClapEncoder.embed_audio on the device, batches of fixed shape
    pipeline windows/s                   ``das label --ray --num-gpus 1`` over a generated archive
    GPU utilisation                      sampled while the pipeline runs (pynvml, else nvidia-smi)
    CPU cores busy per 1 000 windows/s   CPU time of the label process and all its descendants (Ray's
                                         workers included) over the run, start-up included
    agreement with the CPU               cosine of the device's embeddings against CPU fp32 ones, same windows

The checkpoint is, unless ``--checkpoint`` names a real one, a random-weight HTSAT-tiny (the real LAION
architecture and sizes, random weights; the speed is a real checkpoint's, the labels are meaningless). With
no CUDA device the same code runs on the CPU at tiny sizes (``--tiny``) and says so: that is what the tests
run. ``--record`` appends the result to bench/results.json as a ``gpu`` entry naming the device.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

from bench.common import log

HERE = os.path.dirname(os.path.abspath(__file__))
RANDOM_CHECKPOINT = "random-weight HTSAT-tiny (real architecture sizes, random weights)"


@dataclass(frozen=True)
class GpuSizes:
    """How much ``bench.gpu`` measures: ``CARD`` on a GPU, ``TINY`` on a CPU (seconds, for the tests)."""

    encoder_batch: int          # windows per forward pass when timing the encoder
    encoder_calls: int          # timed calls per precision
    agree_windows: int          # windows embedded on both devices
    archive_files: int          # files of the generated archive (hard links to ``distinct_files`` clips)
    distinct_files: int
    file_seconds: float
    label_batch: int            # das label --batch-size
    classes: int                # drift cache: classes and noise phrases
    phrases: int


CARD = GpuSizes(encoder_batch=128, encoder_calls=20, agree_windows=64, archive_files=1000, distinct_files=8,
                file_seconds=60.0, label_batch=64, classes=527, phrases=8)
TINY = GpuSizes(encoder_batch=2, encoder_calls=1, agree_windows=2, archive_files=3, distinct_files=2,
                file_seconds=12.0, label_batch=2, classes=5, phrases=2)


def test_windows(n: int, seed: int = 0) -> np.ndarray:
    """``n`` 10 s windows at 48 kHz of tones in noise, float32 ``[n, 480000]`` (what the encoder embeds)."""
    from bench.inputs import sine_mix

    return np.stack([sine_mix(10.0, 48000, 1, seed=seed + i) for i in range(n)])


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a timer sees it done."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def encoder_call(enc, windows: np.ndarray, device: str):
    """(a call embedding ``windows`` with ``enc``, what it is handed). The encoder alone, where it can take
    windows already on its device (``embed_prepared``: device tensors after LAION's int16 round trip); else
    ``embed_audio`` on host arrays, which adds the host's round trip and the copy to the device."""
    import torch

    from das_core.audio.windows import int16_round_trip

    if hasattr(enc, "embed_prepared"):
        on_device = torch.from_numpy(int16_round_trip(windows)).to(device)
        return (lambda: enc.embed_prepared(on_device)), "device tensors (embed_prepared)"
    return (lambda: enc.embed_audio(windows)), "host arrays (embed_audio: round trip and copy included)"


def encoder_rate(call, device: str, sizes: GpuSizes) -> float:
    """Windows/s of ``call`` (one batch of ``encoder_batch`` windows): one warm-up call, then ``encoder_calls``
    calls timed with the device synchronised."""
    call()
    synchronize(device)
    t = time.perf_counter()
    for _ in range(sizes.encoder_calls):
        call()
    synchronize(device)
    return sizes.encoder_calls * sizes.encoder_batch / (time.perf_counter() - t)


def cosines(emb: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Min and median cosine between the rows of two sets of unit-norm embeddings."""
    cos = np.sum(emb.astype(np.float64) * ref, axis=1)
    return {"min": float(cos.min()), "median": float(np.median(cos))}


def encoder_figures(ckpt: str, device: str, sizes: GpuSizes, cache_uri: str) -> dict:
    """Per precision (fp32, bf16) on ``device``: the encoder's windows/s (``encoder_rate``; what it was handed,
    ``encoder_call``) and the cosines of its embeddings of ``agree_windows`` windows against CPU fp32 ones (same
    batch shape on both). The fp32 encoder also builds the drift cache saved at ``cache_uri``."""
    from das_core.clap.encoder import ClapEncoder

    def load(on: str, precision: str = "fp32") -> ClapEncoder:
        return ClapEncoder.from_checkpoint(ckpt, device=on, precision=precision, max_batch_size=sizes.encoder_batch,
                                           batch_invariant=True)

    agree = test_windows(sizes.agree_windows, seed=200)
    ref = load("cpu").embed_audio(agree)
    out: dict = {"encoder_windows_per_s": {}, "agreement_with_cpu": {}}
    for precision in ("fp32", "bf16"):
        enc = load(device, precision)
        call, out["encoder_input"] = encoder_call(enc, test_windows(sizes.encoder_batch, seed=100), device)
        rate = out["encoder_windows_per_s"][precision] = encoder_rate(call, device, sizes)
        cos = out["agreement_with_cpu"][precision] = cosines(enc.embed_audio(agree), ref)
        log(f"encoder on {device}, {precision}: {rate:,.1f} windows/s (batch {sizes.encoder_batch}); cosine with "
            f"CPU fp32 min {cos['min']:.6f}, median {cos['median']:.6f} ({len(agree)} windows)")
        if precision == "fp32":
            make_cache(enc, sizes, cache_uri)
        del enc, call
    return out


def make_archive(folder: str, sizes: GpuSizes) -> int:
    """``archive_files`` WAV files (44.1 kHz stereo, ``file_seconds`` each) in ``folder``: ``distinct_files``
    generated clips and hard links to them (the decoder reads each file; the disk holds few). Windows in all."""
    import soundfile as sf

    from bench.inputs import sine_mix

    os.makedirs(folder, exist_ok=True)
    for i in range(sizes.archive_files):
        path = os.path.join(folder, f"clip{i:06d}.wav")
        if i < sizes.distinct_files:
            sf.write(path, sine_mix(sizes.file_seconds, 44100, 2, seed=i), 44100, subtype="PCM_16")
        else:
            os.link(os.path.join(folder, f"clip{i % sizes.distinct_files:06d}.wav"), path)
    return sizes.archive_files * int(np.ceil(sizes.file_seconds / 10.0))


def make_cache(enc, sizes: GpuSizes, uri: str) -> None:
    """A drift cache of ``classes`` classes and ``phrases`` noise phrases built with the encoder ``enc``, saved
    at ``uri``."""
    from das_core.scoring.cache import DriftCache

    DriftCache.build(enc.embed_text, [f"class {i:03d}" for i in range(sizes.classes)],
                     [f"noise kind {j}" for j in range(sizes.phrases)], encoder_id=enc.encoder_id).save(uri)


def _proc_stats() -> dict[int, tuple[int, int, int]]:
    """Every live process: pid -> (parent pid, start time, user + system CPU ticks), from /proc."""
    stats = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:             # gone between the listing and the read
            continue
        stats[int(name)] = (int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]))
    return stats


class TreeCpu:
    """The CPU time of a process and all its descendants, sampled every ``every_s`` from /proc while it runs
    (each process counted at its last sample: up to ``every_s`` of a process's work just before it exits is
    missed). ``start`` / ``stop`` around the run; ``seconds`` is the total."""

    def __init__(self, root: int, every_s: float = 0.2):
        self.root, self.every_s = root, every_s
        self.ticks: dict[tuple[int, int], int] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        """Record the CPU ticks of every process now in the tree."""
        stats = _proc_stats()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        todo = [self.root] if self.root in stats else []
        while todo:
            pid = todo.pop()
            _, started, ticks = stats[pid]
            self.ticks[(pid, started)] = max(ticks, self.ticks.get((pid, started), 0))
            todo.extend(children.get(pid, []))

    def _run(self) -> None:
        while not self.done.wait(self.every_s):
            self.sample()

    def start(self) -> None:
        """Sample until ``stop``."""
        self.sample()
        self.thread.start()

    def stop(self) -> None:
        """Stop sampling."""
        self.done.set()
        self.thread.join()

    @property
    def seconds(self) -> float:
        """CPU seconds of every process seen in the tree."""
        return sum(self.ticks.values()) / os.sysconf("SC_CLK_TCK")


class GpuUtilisation:
    """The GPU's utilisation (percent of time a kernel ran) sampled every 0.2 s while entered: pynvml where it
    is installed, else ``nvidia-smi -lms``; ``samples`` stays empty where neither works (a CPU machine)."""

    def __init__(self, index: int = 0):
        self.index, self.samples = index, []
        self.done = threading.Event()
        self.thread: threading.Thread | None = None
        self.smi: subprocess.Popen | None = None

    def __enter__(self) -> GpuUtilisation:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.thread = threading.Thread(target=self._poll_nvml, args=(pynvml, handle), daemon=True)
            self.thread.start()
        except Exception:  # noqa: BLE001 - no pynvml or no driver: try nvidia-smi
            if shutil.which("nvidia-smi"):
                self.smi = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,"
                                             "nounits", "-i", str(self.index), "-lms", "200"],
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                self.thread = threading.Thread(target=self._read_smi, daemon=True)
                self.thread.start()
        return self

    def _poll_nvml(self, pynvml, handle) -> None:
        while not self.done.wait(0.2):
            self.samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    def _read_smi(self) -> None:
        for line in self.smi.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line))

    def __exit__(self, *exc) -> None:
        self.done.set()
        if self.smi is not None:
            self.smi.terminate()
            self.smi.wait()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def summary(self) -> dict | None:
        """Mean and median utilisation in percent and the number of samples; None without samples."""
        if not self.samples:
            return None
        return {"mean": statistics.fmean(self.samples), "median": statistics.median(self.samples),
                "samples": len(self.samples)}


def run_pipeline(ckpt: str, cache: str, archive: str, out: str, device: str, sizes: GpuSizes) -> dict:
    """``das label --ray`` over ``archive`` in a child process (its own local Ray; one GPU actor on CUDA, bf16;
    one CPU actor in fp32 otherwise): windows/s over the whole run and in steady state (the manifest's), CPU
    seconds of the whole process tree, cores busy per 1 000 windows/s, and the GPU's utilisation meanwhile."""
    on_gpu = device.startswith("cuda")
    cmd = [sys.executable, "-m", "jobs.label", "--input", archive, "--cache", cache, "--checkpoint", ckpt,
           "--out", out, "--ray", "--num-gpus", "1" if on_gpu else "0", "--precision", "bf16" if on_gpu else "fp32",
           "--batch-size", str(sizes.label_batch), "--no-report"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}     # das starts its own local Ray
    with GpuUtilisation() as util:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        cpu = TreeCpu(proc.pid)
        cpu.start()
        output, _ = proc.communicate()
        cpu.stop()
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"das label exited with {proc.returncode}:\n{output[-4000:]}")
    with open(os.path.join(out, "_manifest.json")) as f:
        run = json.load(f)["runs"][-1]
    windows = int(run["segments_done"])
    rate = windows / wall
    return {"pipeline_windows": windows, "pipeline_wall_s": wall, "pipeline_windows_per_s": rate,
            "pipeline_steady_windows_per_s": run.get("steady_segments_per_s"),
            "pipeline_startup_s": run.get("startup_s"),
            "pipeline_precision": "bf16" if on_gpu else "fp32", "pipeline_cpu_s": cpu.seconds,
            "cores_busy": cpu.seconds / wall, "cores_per_1000_windows_per_s": cpu.seconds / wall / (rate / 1000),
            "gpu_utilisation_pct": util.summary()}


def measure(ckpt: str, device: str, sizes: GpuSizes, work: str) -> dict:
    """Every figure of the check on ``device`` with ``ckpt``, inputs generated in ``work``."""
    cache = os.path.join(work, "cache.npz")
    result = encoder_figures(ckpt, device, sizes, cache)
    archive = os.path.join(work, "archive")
    windows = make_archive(archive, sizes)
    log(f"pipeline: das label over {sizes.archive_files} files ({windows} windows) on {device}")
    result.update(run_pipeline(ckpt, cache, archive, os.path.join(work, "out"), device, sizes))
    return result


def _pct(summary: dict | None) -> str:
    return "n/a (no GPU)" if summary is None else f"mean {summary['mean']:.0f} %, median {summary['median']:.0f} % " \
                                                  f"({summary['samples']} samples)"


def table(gpu: dict) -> str:
    """The check's one table, as printed."""
    enc, agree = gpu["encoder_windows_per_s"], gpu["agreement_with_cpu"]
    steady = gpu["pipeline_steady_windows_per_s"]
    rows = [("device", f"{gpu['device']}" + ("" if gpu["cuda"] else " (no CUDA: the CPU at tiny sizes)")),
            ("checkpoint", gpu["checkpoint"]),
            ("encoder windows/s fp32", f"{enc['fp32']:,.1f}"), ("encoder windows/s bf16", f"{enc['bf16']:,.1f}"),
            ("encoder handed", gpu["encoder_input"]),
            (f"pipeline windows/s ({gpu['pipeline_precision']}, whole run)",
             f"{gpu['pipeline_windows_per_s']:,.1f} ({gpu['pipeline_windows']} windows in "
             f"{gpu['pipeline_wall_s']:.1f} s, start-up {gpu['pipeline_startup_s'] or 0:.1f} s)"),
            ("pipeline windows/s (steady state)", "n/a (too few chunks)" if steady is None else f"{steady:,.1f}"),
            ("GPU utilisation during the pipeline", _pct(gpu["gpu_utilisation_pct"])),
            ("CPU cores busy per 1 000 windows/s", f"{gpu['cores_per_1000_windows_per_s']:.2f} "
             f"({gpu['cores_busy']:.2f} cores busy on average, whole run)"),
            *((f"cosine vs CPU fp32, {p}", f"min {a['min']:.6f}, median {a['median']:.6f}") for p, a in agree.items())]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options of ``python -m bench.gpu``."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a real checkpoint (path or published name); default: a random-weight "
                                             "HTSAT-tiny of the real architecture, made here")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (automatic without CUDA)")
    parser.add_argument("--record", action="store_true", help="append the result to --results as a 'gpu' entry")
    parser.add_argument("--results", default=os.path.join(HERE, "results.json"), help="default bench/results.json")
    parser.add_argument("--work", help="folder for the generated inputs (default: a temporary one, removed)")
    return parser.parse_args(argv)


def record(path: str, gpu: dict) -> None:
    """Append ``{"when", "machine", "gpu"}`` to the results file at ``path``."""
    from bench.run import history_of, machine

    history = history_of(path)
    history.append({"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine(), "gpu": gpu})
    with open(path, "w") as f:
        json.dump(history, f, indent=2)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.gpu``: measure, print the table, and with ``--record`` append it to the results."""
    import torch

    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    tiny = args.tiny or not cuda
    sizes = TINY if tiny else CARD
    work = args.work or tempfile.mkdtemp(prefix="das-bench-gpu-")
    os.makedirs(work, exist_ok=True)
    os.environ.setdefault("DAS_CACHE_DIR", os.path.join(work, "das-cache"))
    if not cuda:
        log("no CUDA device: running the same code on the CPU at tiny sizes")
    try:
        ckpt = args.checkpoint
        if ckpt is None:
            from das_core.clap.random_weights import write_random_checkpoint

            ckpt = write_random_checkpoint(os.path.join(work, "HTSAT-tiny-random.pt"))
        started = time.perf_counter()
        gpu = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "cuda": cuda, "tiny": tiny,
               "checkpoint": args.checkpoint or RANDOM_CHECKPOINT, **measure(ckpt, device, sizes, work)}
        gpu["duration_s"] = round(time.perf_counter() - started, 1)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + table(gpu))
    print(f"\ntook {gpu['duration_s']:.0f} s")
    if args.record:
        record(args.results, gpu)
        print(f"recorded in {args.results} as a 'gpu' entry ({gpu['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
