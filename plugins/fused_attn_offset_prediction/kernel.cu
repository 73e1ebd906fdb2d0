// int8 x int8 -> int32 GEMM with __dp4a for the two fused attention projections.
//
// Tiling: a block owns kTileRows rows of M and kTileCols output channels of ONE projection
// (blockIdx.x picks the projection, so two different inputs x0/x1 and widths N0/N1 need no
// per-thread branching in the inner loop). K is staged through shared memory in chunks of
// kChunkBytes; each thread keeps kRowsPerThread int32 accumulators for one output channel.
// The zero point is applied after the loop as acc - zp * sum_k w[n, k]; the weight row sum
// comes from the same dp4a loop (dp4a(w, 0x01010101)), so zp != 0 costs one extra dp4a.
#include "kernel.h"

namespace {

constexpr int kTileCols = 64;        // output channels per block (= blockDim.x)
constexpr int kThreadRows = 4;       // blockDim.y
constexpr int kRowsPerThread = 4;    // rows of M per thread
constexpr int kTileRows = kThreadRows * kRowsPerThread;  // 16 rows of M per block
constexpr int kChunkWords = 32;      // int32 words of K staged per step
constexpr int kChunkBytes = kChunkWords * 4;
constexpr int kThreads = kTileCols * kThreadRows;

struct Projection
{
    const int8_t* x;
    const int8_t* w;
    const float* scale;
    const float* bias;
    float* y;
    int n;
    int zp;
};

struct Problem
{
    Projection proj[2];
    int m;
    int k;
    int colBlocks0;  // column blocks that belong to projection 0
    int rowBlocks;
};

// Four consecutive int8 values of `row` starting at byte `k`, packed little-endian; zero past K.
__device__ __forceinline__ int32_t loadPacked(const int8_t* row, int k, int kTotal, bool aligned)
{
    if (aligned && k + 4 <= kTotal)
    {
        return *reinterpret_cast<const int32_t*>(row + k);
    }
    uint32_t packed = 0;
#pragma unroll
    for (int b = 0; b < 4; ++b)
    {
        if (k + b < kTotal)
        {
            packed |= (static_cast<uint32_t>(static_cast<uint8_t>(row[k + b]))) << (8 * b);
        }
    }
    return static_cast<int32_t>(packed);
}

__global__ void __launch_bounds__(kThreads) fusedAttnOffsetPredictionKernel(Problem p)
{
    __shared__ int32_t xTile[kTileRows][kChunkWords];
    __shared__ int32_t wTile[kTileCols][kChunkWords + 1];  // +1: no bank conflicts on column reads

    const bool second = blockIdx.x >= static_cast<unsigned>(p.colBlocks0);
    Projection proj = p.proj[0];  // field copies with a uniform branch: no local-memory copy
    if (second)
    {
        proj = p.proj[1];
    }
    const int colBlock = second ? blockIdx.x - p.colBlocks0 : blockIdx.x;
    const int col0 = colBlock * kTileCols;
    const int tid = threadIdx.y * kTileCols + threadIdx.x;
    // Word loads need 4-byte aligned rows: K % 4 == 0 and aligned base pointers.
    const bool aligned = (p.k % 4 == 0) && (reinterpret_cast<uintptr_t>(proj.x) % 4 == 0)
        && (reinterpret_cast<uintptr_t>(proj.w) % 4 == 0);

    for (int rowBlock = blockIdx.y; rowBlock < p.rowBlocks; rowBlock += gridDim.y)
    {
        const int row0 = rowBlock * kTileRows;
        int32_t acc[kRowsPerThread] = {0, 0, 0, 0};
        int32_t weightSum = 0;

        for (int kBase = 0; kBase < p.k; kBase += kChunkBytes)
        {
            for (int i = tid; i < kTileRows * kChunkWords; i += kThreads)
            {
                const int r = i / kChunkWords;
                const int word = i % kChunkWords;
                const int row = row0 + r;
                xTile[r][word] = row < p.m
                    ? loadPacked(proj.x + static_cast<int64_t>(row) * p.k, kBase + 4 * word, p.k, aligned)
                    : 0;
            }
            for (int i = tid; i < kTileCols * kChunkWords; i += kThreads)
            {
                const int c = i / kChunkWords;
                const int word = i % kChunkWords;
                const int n = col0 + c;
                wTile[c][word] = n < proj.n
                    ? loadPacked(proj.w + static_cast<int64_t>(n) * p.k, kBase + 4 * word, p.k, aligned)
                    : 0;
            }
            __syncthreads();

#pragma unroll 8
            for (int word = 0; word < kChunkWords; ++word)
            {
                const int32_t w = wTile[threadIdx.x][word];
                weightSum = __dp4a(w, 0x01010101, weightSum);
#pragma unroll
                for (int r = 0; r < kRowsPerThread; ++r)
                {
                    acc[r] = __dp4a(xTile[threadIdx.y * kRowsPerThread + r][word], w, acc[r]);
                }
            }
            __syncthreads();
        }

        const int n = col0 + threadIdx.x;
        if (n < proj.n)
        {
            const float scale = proj.scale[n];
            const float bias = proj.bias[n];
            const int32_t zeroPointTerm = proj.zp * weightSum;
#pragma unroll
            for (int r = 0; r < kRowsPerThread; ++r)
            {
                const int row = row0 + threadIdx.y * kRowsPerThread + r;
                if (row < p.m)
                {
                    proj.y[static_cast<int64_t>(row) * proj.n + n]
                        = static_cast<float>(acc[r] - zeroPointTerm) * scale + bias;
                }
            }
        }
    }
}

} // namespace

extern "C" cudaError_t launchFusedAttnOffsetPrediction(const int8_t* x0, const int8_t* x1, int M, int K,
    const int8_t* w0, const float* scale0, const float* bias0, int N0, int zp0,
    const int8_t* w1, const float* scale1, const float* bias1, int N1, int zp1,
    float* y0, float* y1, cudaStream_t stream)
{
    if (M < 0 || K <= 0 || N0 <= 0 || N1 <= 0)
    {
        return cudaErrorInvalidValue;
    }
    if (M == 0)
    {
        return cudaSuccess;
    }
    if (!x0 || !x1 || !w0 || !w1 || !scale0 || !scale1 || !bias0 || !bias1 || !y0 || !y1)
    {
        return cudaErrorInvalidValue;
    }
    Problem problem{};
    problem.proj[0] = Projection{x0, w0, scale0, bias0, y0, N0, zp0};
    problem.proj[1] = Projection{x1, w1, scale1, bias1, y1, N1, zp1};
    problem.m = M;
    problem.k = K;
    problem.colBlocks0 = (N0 + kTileCols - 1) / kTileCols;
    problem.rowBlocks = (M + kTileRows - 1) / kTileRows;

    const int colBlocks = problem.colBlocks0 + (N1 + kTileCols - 1) / kTileCols;
    constexpr int kMaxGridY = 65535;  // larger M loops over row blocks inside the kernel
    const dim3 grid(colBlocks, problem.rowBlocks < kMaxGridY ? problem.rowBlocks : kMaxGridY);
    const dim3 block(kTileCols, kThreadRows);
    fusedAttnOffsetPredictionKernel<<<grid, block, 0, stream>>>(problem);
    return cudaGetLastError();
}
