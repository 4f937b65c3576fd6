"""ofa_core: a pure torch/numpy Once-for-All library (supernet, extraction, costs, latency, predictor, search).

It never imports web, database, queue or settings code; everything comes in as arguments.
"""
from .spec import (ConfigError, SubnetConfig, SupernetSpec, encode_batch, get_spec, list_specs, register)
from .mbv3 import OFAMobileNetV3, build_supernet

__all__ = ["ConfigError", "SubnetConfig", "SupernetSpec", "encode_batch", "get_spec", "list_specs", "register",
           "OFAMobileNetV3", "build_supernet"]

# -- extraction, checkpoints, costs, export (issue 2) --------------------------------------------------
from .extract import StaticMobileNetV3, extract, extract_state_dict, net_config, run_config
from .checkpoint import (CheckpointError, check_state_dict, filter_checkpoint, load_published_checkpoint,
                         load_supernet_weights)
from .costs import CostModel, config_costs
from .export import (SafetensorsStream, export_onnx_bytes, export_pt_bytes, export_safetensors,
                     export_torchscript_bytes, load_safetensors_checkpoint, subnet_metadata)

__all__ += ["StaticMobileNetV3", "extract", "extract_state_dict", "net_config", "run_config",
            "CheckpointError", "check_state_dict", "filter_checkpoint", "load_published_checkpoint",
            "load_supernet_weights", "CostModel", "config_costs", "SafetensorsStream", "export_onnx_bytes",
            "export_pt_bytes", "export_safetensors", "export_torchscript_bytes", "load_safetensors_checkpoint",
            "subnet_metadata"]

from .latency import LatencyEntry, LatencyTable, LatencyTableError
from .predictor import AccuracyPredictor, build_predictor_dataset, train_predictor
from .search import (Constraints, Efficiency, InfeasibleError, ParetoFront, SearchCancelled, SearchResult,
                     evolutionary_search, pareto_search)
from .calibrate import calibrate, calibration_curve

__all__ += ["LatencyEntry", "LatencyTable", "LatencyTableError", "AccuracyPredictor", "build_predictor_dataset",
            "train_predictor", "Constraints", "Efficiency", "InfeasibleError", "ParetoFront", "SearchCancelled",
            "SearchResult", "evolutionary_search", "pareto_search", "calibrate", "calibration_curve"]
