"""Performance tools: ``bench`` (step timing, MFU), ``fitcheck`` (ahead-of-time memory fit),
``flops`` (analytic FLOP counts through each method's contract), ``profiling`` and ``host_memory``."""
