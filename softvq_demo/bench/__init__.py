"""Benchmarks.

``python -m softvq_demo.bench``          GPU throughput of generators and tokenizers: naive fp32,
                                         the official recipe, and our fast path (``gpu.py``).
``python -m softvq_demo.bench.app_cpu``  CPU latency of the explorer's main actions.
"""
