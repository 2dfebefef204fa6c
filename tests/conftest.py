"""Settings of the whole test session."""

import os

# A training process shares the cores with the other medcontext runs on the machine and re-counts
# them after every step (medcontext.engine.cpu_threads). A thread count that changes mid-run changes
# the rounding of float reductions, so a test's numbers would depend on what else the machine runs
# (a resumed run would no longer match its uninterrupted twin bit for bit). An explicit count fixes it.
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
