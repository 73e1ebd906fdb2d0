"""The fused sampling-offset / attention-weight projection of RT-DETRv2 decoder cross attention."""
