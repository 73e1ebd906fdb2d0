"""A tiny stand-in for the RT-DETRv2 decoder's cross-attention projections, exported as Q/DQ ONNX.

Each of its layers has ``sampling_offsets`` and ``attention_weights`` Linear layers reading one query,
quantized by modelopt (INT8 default config) and exported like the real model, so the graph carries the
exact Q/DQ pattern the surgery passes rewrite, in seconds instead of minutes. Used by the tests and
handy for trying a pass by hand.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class CrossAttentionProjections(nn.Module):
    """query -> (sampling_offsets, attention_weights) -> a residual mix, like one decoder layer."""

    def __init__(self, dim: int, offsets: int) -> None:
        super().__init__()
        self.sampling_offsets = nn.Linear(dim, offsets)
        self.attention_weights = nn.Linear(dim, offsets // 2)
        self.output_proj = nn.Linear(offsets // 2, dim)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        offsets = self.sampling_offsets(query)
        weights = self.attention_weights(query).softmax(-1)
        return query + self.output_proj(weights) + offsets[..., : query.shape[-1]].tanh()


class ExampleDecoder(nn.Module):
    def __init__(self, num_layers: int = 2, dim: int = 32, offsets: int = 48) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionProjections(dim, offsets) for _ in range(num_layers))

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            query = layer(query)
        return query


def export_example(path: str | Path, num_layers: int = 2, quantize: bool = True,
                   distinct_scales: bool = False,
                   dim: int = 32, offsets: int = 48, queries: int = 10, seed: int = 0) -> Path:
    """Write the example decoder as ONNX (opset 17, dynamic batch ``N``); input ``query`` [N, Q, dim].

    distinct_scales: give each layer's attention_weights input quantizer twice the calibrated range, so
    the two projections quantize the same query with different scales.
    """
    torch.manual_seed(seed)
    model = ExampleDecoder(num_layers, dim, offsets).eval()
    calib = [torch.randn(2, queries, dim) for _ in range(2)]
    if quantize:
        import modelopt.torch.quantization as mtq

        def forward_loop(m: nn.Module) -> None:
            for batch in calib:
                m(batch)

        model = mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)
        if distinct_scales:
            for layer in model.layers:
                quantizer = layer.attention_weights.input_quantizer
                quantizer.amax = quantizer.amax * 2.0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model, (calib[0],), str(path), dynamo=False, opset_version=17,
                          input_names=["query"], output_names=["output"],
                          dynamic_axes={"query": {0: "N"}, "output": {0: "N"}})
    return path
