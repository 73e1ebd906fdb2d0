"""Custom TensorRT plugins of rtq, each with its reference math and an ONNX Runtime form."""
