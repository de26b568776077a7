"""How far the device front end (julius on the encoder's device) is from the host path it replaced (soxr HQ).

    python -m bench.agreement RECORDING_OR_FOLDER ... [--checkpoint CKPT] [--source TEXT]

Per recording: the SNR of julius' 48 kHz signal against soxr HQ's (the whole file, mono, float32), and the
cosine of each window's embedding on the new path (``decode_unit`` -> ``DeviceFrontEnd`` ->
``ClapEncoder.embed_prepared``) against the old one (``AudioStream.int16_windows`` ->
``ClapEncoder.embed_audio_int16``), min and median over the recording's windows; then a summary over all.
Without ``--checkpoint`` the model is a random-weight HTSAT-tiny made as the tests make theirs, and the
output says so: its cosines measure the plumbing, not a trained model's sensitivity.

Real recordings used for the README's figures: the LibriVox speech clips in pocketsphinx 5.1.1's sdist
(``test/data/librivox/*.wav``, 16 kHz mono), extracted from the tarball PyPI serves for
``pocketsphinx==5.1.1``; ``--source`` names them in the output.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

AUDIO = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aiff", ".aif", ".opus", ".webm")


def _recordings(paths: list[str]) -> list[str]:
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(os.path.join(root, f) for root, _, files in os.walk(path) for f in files
                            if f.lower().endswith(AUDIO))
        else:
            found.append(path)
    return found


def resample_snr_db(path: str) -> tuple[float, int]:
    """SNR (dB) of julius' 48 kHz mono signal against soxr HQ's over their common length, and the file's rate."""
    import torch

    from das_core.audio.decode import AudioStream, load_mono48k
    from das_core.audio.frontend import downmix
    from das_core.audio.native import NativeAudio
    from das_core.audio.resample import Ratio, resample_48k

    data = open(path, "rb").read()
    soxr48 = load_mono48k(data, path)
    with AudioStream(data, path) as stream:
        audio = NativeAudio(stream)
        rate, blocks = audio.rate, []
        while True:
            block = np.empty((1 << 16, audio.channels), dtype=audio.dtype)
            got = audio.read_into(block)
            if not got:
                break
            blocks.append(block[:got])
    frames = np.concatenate(blocks)
    if frames.dtype == np.int16:
        frames = frames.astype(np.float32) / np.float32(32768.0)
    context = Ratio.of(rate).context
    mono = downmix(torch.from_numpy(np.ascontiguousarray(frames)))
    padded = torch.cat([mono.new_zeros(context), mono, mono.new_zeros(context)])
    julius48 = resample_48k(padded, rate, context).numpy()
    n = min(len(julius48), len(soxr48))
    ref, err = soxr48[:n].astype(np.float64), julius48[:n].astype(np.float64) - soxr48[:n]
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum(err ** 2))), rate


def window_cosines(path: str, encoder) -> np.ndarray:
    """Cosine of each window's embedding, new path against old, over the windows both paths have."""
    from das_core.audio.decode import AudioStream
    from das_core.audio.frontend import DeviceFrontEnd
    from das_core.label.decode import ChunkMeta, DecodeSettings, decode_unit

    front_end = DeviceFrontEnd(encoder.device)
    new = []
    for table in decode_unit("u00000000", ["clip"], [path], DecodeSettings()):
        meta = ChunkMeta.parse(table.column("meta")[0].as_py())
        if meta.windows:
            windows, _ = front_end.windows(front_end.stage(table.column("audio")[0].as_buffer()), meta)
            new.append(encoder.embed_prepared(windows))
    with AudioStream(open(path, "rb").read(), path) as stream:
        pcm = np.stack([np.frombuffer(b, np.int16) for _, b in stream.int16_windows()])
    old = encoder.embed_audio_int16(pcm)
    new_all = np.concatenate(new)
    n = min(len(old), len(new_all))
    return np.sum(old[:n].astype(np.float64) * new_all[:n], axis=1)


def main(argv: list[str] | None = None) -> None:
    """Print one line per recording and a summary (see the module's docstring)."""
    from das_core.clap.encoder import DEFAULT_BATCH_SIZE, ClapEncoder
    from das_core.clap.random_weights import write_random_checkpoint

    parser = argparse.ArgumentParser(prog="python -m bench.agreement", description=__doc__.splitlines()[0])
    parser.add_argument("recordings", nargs="+", help="audio files or folders of real recordings")
    parser.add_argument("--checkpoint", help="a CLAP checkpoint (default: random-weight HTSAT-tiny, test-made)")
    parser.add_argument("--source", default=None, help="where the recordings come from (printed)")
    args = parser.parse_args(argv)
    paths = _recordings(args.recordings)
    if not paths:
        parser.error("no recordings found")
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = write_random_checkpoint(os.path.join(tempfile.mkdtemp(), "random-tiny.pt"), seed=0)
        print("model: HTSAT-tiny with RANDOM weights (made as the tests make theirs): cosines measure the "
              "plumbing, not a trained model")
    else:
        print(f"model: {checkpoint}")
    print(f"recordings: {args.source or ', '.join(sorted({os.path.dirname(p) for p in paths}))}")
    encoder = ClapEncoder.from_checkpoint(checkpoint, max_batch_size=DEFAULT_BATCH_SIZE, batch_invariant=True)
    snrs, cosines = [], []
    for path in paths:
        snr, rate = resample_snr_db(path)
        cos = window_cosines(path, encoder)
        snrs.append(snr)
        cosines.append(cos)
        print(f"{os.path.basename(path)}: {rate} Hz, julius vs soxr HQ SNR {snr:.1f} dB; {len(cos)} windows, "
              f"cosine min {cos.min():.6f} median {np.median(cos):.6f}")
    every = np.concatenate(cosines)
    print(f"summary: {len(paths)} recordings, {len(every)} windows; SNR min {min(snrs):.1f} dB median "
          f"{np.median(snrs):.1f} dB; cosine min {every.min():.6f} median {np.median(every):.6f}; "
          f"goal cosine >= 0.9999 on every window: {'met' if every.min() >= 0.9999 else 'NOT met'}")


if __name__ == "__main__":
    main()
