"""OpenVINO (CPU) compiler backend: compile, run, inspect."""
