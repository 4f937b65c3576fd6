"""The service's adapter around ofa_core: one place that knows how ofa_core is called.

Where an ofa_core module the service needs is not available, a small fallback in this package stands in
(see `fallback.py`); `capabilities()` says which implementation is in use.
"""
