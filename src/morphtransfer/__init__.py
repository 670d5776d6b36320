"""morphtransfer: carry a galaxy-morphology classifier from one survey to another.

Reference study: Dominguez Sanchez et al. 2019, MNRAS 484, 93 ("Transfer learning for galaxy
morphology from one survey to another"). See ARCHITECTURE.md for the one flow and one Store.
"""

import os

__version__ = "0.1.0"

# OpenMP threads that wait for work sleep instead of spinning. PyTorch's CPU kernels run in short
# parallel regions (DS18 at batch 30-32); with spinning waiters, any other process on the cores
# (a second job, a data reader, Ray workers) makes the waiting threads burn the CPU it needs:
# measured on 2 cores with another job running, training fell from ~84 to ~45 img/s and batch-32
# inference from 665 to 136 img/s. Only a default: a user's OMP_WAIT_POLICY wins, and it must be
# set before torch is first imported, which is why it lives here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
