"""What the engine needs to know and set about the machine it runs on.

Nothing here knows of configs, data or the training loop: :mod:`~.precision` (device and
autocast), :mod:`~.precision_check` (is reduced precision right for this network),
:mod:`~.cpu_threads` (intra-op threads and the CPU share of a process), :mod:`~.cpu_memory` and
:mod:`~.tcmalloc` (the allocator), :mod:`~.signals` (Ctrl-C and SIGTERM stop a run at a step
boundary), :mod:`~.machine` (the processor a run trained on) and :mod:`~.distributed` (the
process group, rank facts and collectives).
"""
