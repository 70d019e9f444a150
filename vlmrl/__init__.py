"""vlmrl: a vision-language model learns Atari by trial, reflection and fine-tuning."""

import os

# OpenMP threads that spin while they wait turn a busy 2-core machine into a crawl: measured here, a
# tiny-model forward took 8x longer with 2 spinning threads than with 1 while other work ran, and the
# same with passive waiting. Set before torch is imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
