"""The experiment pipeline: stage descriptors, typed artifacts, and the driver that runs a chain.

See `rtq.pipeline.stage` (descriptors, `register_stage`), `rtq.pipeline.artifacts` (what stages
hand each other) and `rtq.pipeline.driver` (`check_chain`, `run_pipeline`).
"""
