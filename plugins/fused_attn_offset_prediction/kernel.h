// Fused int8 projections of the RT-DETR deformable-attention query: sampling_offsets and
// attention_weights read the same quantized query, so one launch computes both.
// Plain CUDA: no TensorRT include, so the kernel can be built and tested on its own.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

// y_i[m, n] = (sum_k (int32(x_i[m, k]) - zp_i) * int32(w_i[n, k])) * scale_i[n] + bias_i[n]
//
// x0, x1:  int8 [M, K] row-major (x1 may equal x0 when both projections share one quantization).
// w0, w1:  int8 [N_i, K] row-major (PyTorch Linear layout: row n = output channel n).
// scale_i: float [N_i], input_scale_i * weight_scale_i[n] (folded by the caller once).
// bias_i:  float [N_i].
// y0, y1:  float [M, N_i] row-major.
// Any M >= 0 (M = B * Q), any K > 0 (a K that is not a multiple of 4 takes a slower tail path).
// Everything runs on `stream`; the function neither allocates nor synchronizes.
// Returns cudaErrorInvalidValue for bad arguments, otherwise the launch status.
cudaError_t launchFusedAttnOffsetPrediction(const int8_t* x0, const int8_t* x1, int M, int K,
    const int8_t* w0, const float* scale0, const float* bias0, int N0, int zp0,
    const int8_t* w1, const float* scale1, const float* bias1, int N1, int zp1,
    float* y0, float* y1, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
