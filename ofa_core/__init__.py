"""ofa_core: a pure torch/numpy Once-for-All library (supernet, extraction, costs, latency, predictor, search).

It never imports web, database, queue or settings code; everything comes in as arguments.
"""
from .spec import (ConfigError, SubnetConfig, SupernetSpec, encode_batch, get_spec, list_specs, register)
from .mbv3 import OFAMobileNetV3, build_supernet

__all__ = ["ConfigError", "SubnetConfig", "SupernetSpec", "encode_batch", "get_spec", "list_specs", "register",
           "OFAMobileNetV3", "build_supernet"]
