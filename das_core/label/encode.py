"""The encode stage of ``das label``: a chunk's pieces -> model windows on the device -> embeddings -> the sink.

The chunk's audio is the codec's output; ``das_core.audio.frontend.DeviceFrontEnd`` turns it into the model's
windows on the encoder's device (downmix, resampling, noise at the SNR, LAION's int16 round trip).

One ``ChunkEncoder`` per encoder actor (on Ray, ``jobs.pipeline`` gives it the drift cache the driver put in
the object store; a local run, ``das_core.label.local``, makes one in the das process). Each chunk row is
embedded and handed to the unit sink (``das_core.label.sink.write_chunk``), which scores every window once
and writes the chunk's parts; what goes back to the driver is the chunk's statistics row
(``STATS_WITH_NODES``), never an embedding or a score vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from das_core.audio.frontend import DeviceFrontEnd, NoiseMixer
from das_core.audio.noise import NoiseBank
from das_core.label.decode import ChunkMeta
from das_core.label.sink import STATS_SCHEMA, WriteSettings, write_chunk
from das_core.output.store import OutputStore
from das_core.scoring.cache import DriftCache

# What an encoder actor hands the driver per chunk: the statistics and the node that decoded the chunk.
STATS_WITH_NODES = STATS_SCHEMA.append(pa.field("decoded_on", pa.string()))


@dataclass(frozen=True)
class EncodeSettings:
    """How each encoder actor loads and runs the model."""

    checkpoint: str
    num_gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    precision: str = "fp32"
    max_batch_size: int | None = None
    torch_threads: int | None = None
    tokenizer_dir: str | None = None
    snr_db: float | None = None       # noise at this SNR, mixed on the encoder's device
    seed: int = 0
    noise_uris: tuple[str, ...] = ()

    @property
    def device_type(self) -> str:
        """Where the encoder runs: ``cuda`` with GPUs, else ``cpu`` (recorded in the manifest's settings)."""
        return "cuda" if self.num_gpus_per_actor > 0 else "cpu"


class ChunkEncoder:
    """The encode-and-write stage: embeds each chunk row's windows, scores them once and writes its parts.

    One per encoder actor; ``node`` tags the statistics it returns. Called with a batch of chunk rows
    (``das_core.label.decode.CHUNK_SCHEMA``), it returns their statistics rows (``STATS_WITH_NODES``).
    """

    def __init__(self, settings: EncodeSettings, cache: DriftCache, out: str, write: WriteSettings, node: str):
        from das_core.clap.encoder import ClapEncoder

        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        device = settings.device_type
        self.encoder = ClapEncoder.from_checkpoint(settings.checkpoint, device=device, precision=settings.precision,
                                                   tokenizer_dir=settings.tokenizer_dir,
                                                   max_batch_size=settings.max_batch_size, batch_invariant=True)
        # the driver checked too; a worker may see another file at the same path
        cache.check_encoder(self.encoder.encoder_id, settings.checkpoint)
        self.cache, self.store, self.write, self.node = cache, OutputStore(out), write, node
        self.front_end = DeviceFrontEnd(self.encoder.device, _noise_mixer(settings, self.encoder.device))

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        audio = batch.column("audio")           # read in place: a chunk's pieces are tens of MiB
        staged = [self.front_end.stage(audio[i].as_buffer()) for i in range(len(batch))]   # copies overlap
        for i, row in enumerate(batch.drop_columns(["audio"]).to_pylist()):
            meta = ChunkMeta.parse(row["meta"])
            stored = None
            if row["n_windows"]:
                windows, sources = self.front_end.windows(staged[i], meta)
                for window, source in zip(meta.windows, sources):
                    window[4] = source
                stored = self.encoder.embed_prepared(windows).astype(self.write.embedding_dtype)
            staged[i] = None
            stats = write_chunk(self.store, row["unit"], row["chunk"], row["last"], meta, stored, self.cache,
                                self.write)
            rows.append({**stats, "node": self.node, "decoded_on": row.get("decoded_on")})
        return pa.Table.from_pylist(rows, schema=STATS_WITH_NODES)


_BANKS: dict[tuple, NoiseBank] = {}


def _noise_mixer(settings: EncodeSettings, device) -> NoiseMixer | None:
    """The noise mixing the run asks for, on ``device``; the decoded bank is shared by the actor's encoders."""
    if settings.snr_db is None:
        return None
    key = settings.noise_uris
    if key not in _BANKS:
        _BANKS.clear()
        _BANKS[key] = NoiseBank(list(key))
    return NoiseMixer(_BANKS[key], settings.snr_db, settings.seed, device)
