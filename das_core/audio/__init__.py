"""Audio in, model input out: decoding (libsndfile, FFmpeg), mono 48 kHz, 10 s windows, the int16 round trip, noise.

decode (AudioStream: choosing the reader, the libsndfile path, resampling, the checks),
ffmpeg (the FFmpeg reader), info (what a container declares, error kinds),
windows (10 s windows, repeat-padding, LAION's int16 round trip), noise (mixing at an SNR).
"""
