"""The CLAP model: finding and fetching checkpoints, the LAION and Hugging Face backends, one encoder over both.

checkpoint (resolve, fingerprint, provenance), download (fetching into the cache atomically),
formats (LAION state dicts and ClapModel folders, read and recognised), laion and hf (the backends),
tokenizer (the tokenizer checks, written once), encoder (ClapEncoder), offline (Hugging Face offline
settings), random_weights (test checkpoints).
"""
