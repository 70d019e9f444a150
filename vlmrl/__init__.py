"""vlmrl: a vision-language model learns Atari by trial, reflection and fine-tuning."""

import os

# OpenMP threads that spin while they wait turn a busy 2-core machine into a crawl: measured here, a
# tiny-model forward took 8x longer with 2 spinning threads than with 1 while other work ran, and the
# same with passive waiting. Set before torch is imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# VLMRL_PORTABLE_KERNELS=1: fewer CPU-dependent floating-point results. Which kernels torch, MKL and oneDNN
# pick depends on the CPU (AVX-512, AVX2, Intel or AMD), and so do the low bits of every sum: measured, one
# tiny-model build gave one checksum twice with the default kernels and other checksums with ATen or oneDNN
# held to AVX2. Pinning all three to their baseline code paths made the checksum independent of the kernels
# on one AMD EPYC, at about twice the CPU time; an Intel Xeon still gave another (README, Reproducibility).
# Set before torch loads.
PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}
if os.environ.get("VLMRL_PORTABLE_KERNELS", "").strip().lower() in ("1", "true", "yes", "on"):
    for _name, _value in PORTABLE_KERNELS.items():
        os.environ.setdefault(_name, _value)

__version__ = "0.1.0"
