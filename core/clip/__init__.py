"""CLIP on open_clip: loading (real or stand-in weights), decoding, embeddings, zero-shot, S2.

Decode threads share the CPU with torch's OpenMP workers, which by default spin for a while after
each parallel region and so steal cores from decoding (measured: ~15% fewer images/s). Passive
waiting fixes that; it only takes effect if set before torch is first imported in the process.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
