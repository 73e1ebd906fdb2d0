"""rtq: INT8 deployment of RT-DETR-family detectors on TensorRT, and finding out why INT8 goes wrong."""

import warnings

__version__ = "0.1.0"

# modelopt.torch warns on import when transformers is newer than the range its Hugging Face plugins
# were tested with. rtq calibrates only its own torch modules with modelopt.torch (transformers models
# go through modelopt's ONNX PTQ), so the caveat does not apply and would only repeat on every run.
warnings.filterwarnings("ignore", message=r"transformers \S+ is not tested with current version of modelopt")
