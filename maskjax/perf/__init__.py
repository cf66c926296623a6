"""Performance tools: ``bench`` (step timing, MFU), ``fitcheck`` (ahead-of-time memory fit),
``flops`` (analytic FLOP counts through each method's contract) and ``profiling``. The glibc
malloc tuning they apply lives in the low-level :mod:`maskjax.host_memory`, which the trainer's
entry point uses too."""
