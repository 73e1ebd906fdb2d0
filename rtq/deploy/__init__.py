"""Deployment: serving rtq's artifacts (ONNX, Q/DQ ONNX, TensorRT engines) from a Triton model repository.

`graph_io` reads what a model takes and gives, `triton_config` turns that into Triton's own
`ModelConfig` protobuf, `triton_check` holds the rules the server enforces that can be checked
offline, `triton_repo` writes the repository, `triton_server` asks a real `tritonserver` (from
`./workflow.sh triton-setup`) for its verdict and serves models from it.
"""
