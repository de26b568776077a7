"""The encode stage of ``das label``: a chunk's int16 windows -> embeddings (as stored) -> the unit sink.

One ``ChunkEncoder`` per encoder actor (on Ray, ``jobs.pipeline`` gives it the drift cache the driver put in
the object store; a local run, ``das_core.label.local``, makes one in the das process). Each chunk row is
embedded and handed to the unit sink (``das_core.label.sink.write_chunk``), which scores every window once
and writes the chunk's parts; what goes back to the driver is the chunk's statistics row
(``STATS_WITH_NODES``), never an embedding or a score vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from das_core.audio.windows import WINDOW_SAMPLES
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
        device = "cuda" if settings.num_gpus_per_actor > 0 else "cpu"
        self.encoder = ClapEncoder.from_checkpoint(settings.checkpoint, device=device, precision=settings.precision,
                                                   tokenizer_dir=settings.tokenizer_dir,
                                                   max_batch_size=settings.max_batch_size, batch_invariant=True)
        # the driver checked too; a worker may see another file at the same path
        cache.check_encoder(self.encoder.encoder_id, settings.checkpoint)
        self.cache, self.store, self.write, self.node = cache, OutputStore(out), write, node

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        audio = batch.column("audio")           # read in place: a chunk's windows are about 30 MiB
        for i, row in enumerate(batch.drop_columns(["audio"]).to_pylist()):
            n = row["n_windows"]
            stored = None
            if n:
                windows = np.frombuffer(audio[i].as_buffer(), dtype=np.int16).reshape(n, WINDOW_SAMPLES)
                stored = self.encoder.embed_audio_int16(windows).astype(self.write.embedding_dtype)
            stats = write_chunk(self.store, row["unit"], row["chunk"], row["last"], ChunkMeta.parse(row["meta"]),
                                stored, self.cache, self.write)
            rows.append({**stats, "node": self.node, "decoded_on": row.get("decoded_on")})
        return pa.Table.from_pylist(rows, schema=STATS_WITH_NODES)
