"""rtq.backends: Polygraphy runners per backend (`torch`, `onnxruntime`, `tensorrt`); imported lazily."""
