"""`openjepa bench`: the training step timed on synthetic data (``step``), the input pipeline
(``bench_loader``), and the host's share of the step, counted and timed at a width where the
arithmetic vanishes (``overhead``)."""

from .step import PEAK_TFLOPS, bench, bench_loader, block_flops, flops_per_image, peak_tflops

__all__ = ["PEAK_TFLOPS", "bench", "bench_loader", "block_flops", "flops_per_image", "peak_tflops"]
