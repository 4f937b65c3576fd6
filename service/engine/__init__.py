"""The service's glue around ofa_core: one place that knows how ofa_core is called (`adapter`), latency-table
uploads (`tables`) and host profiling (`profile`)."""
