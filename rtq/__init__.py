"""rtq: INT8 deployment of RT-DETR-family detectors on TensorRT, and finding out why INT8 goes wrong."""

__version__ = "0.1.0"
