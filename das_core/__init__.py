"""das_core: the library behind `das` (no Ray import anywhere in it).

Noise-robust zero-shot audio labelling with LAION-CLAP and Drift-Augmented
Scoring (DAS). See README.md and ../shared/METHOD.md for the method.
"""

__version__ = "0.1.0"
