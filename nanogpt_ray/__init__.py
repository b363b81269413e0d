"""nanogpt-ray: nanoGPT's training, sampling and benchmarks, run on a Ray cluster."""

__version__ = "0.1.0"
