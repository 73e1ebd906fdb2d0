"""TensorRT's EfficientNMS_TRT plugin as a reference op, so End2End graphs that use it run on CPU."""
