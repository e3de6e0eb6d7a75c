// 03 — tiled matmul, C[M,N] = A[M,K] @ B[K,N], fp32, row-major. Two steps of the same idea:
//
//  (a) matmul_smem: 32x32 tiles of A and B staged in shared memory; each loaded element is reused 32 times.
//  (b) matmul_tiled: a 128x128 block tile, BK=8, and an 8x8 register tile per thread (256 threads). Each value
//      loaded from shared memory now feeds 8 FMAs, so the kernel stops being bound by shared-memory bandwidth.
//      Arithmetic intensity per block: 2*128*128*8 FLOPs per (128+128)*8*4 bytes = 16 FLOP/byte from global.
// Bounds are checked on every load and store, so any M, N, K works (zeros pad the edge tiles).
#include <cuda_runtime.h>

#define TS 32
__global__ void matmul_smem_kernel(int M, int N, int K, const float* __restrict__ A,
                                   const float* __restrict__ B, float* __restrict__ C) {
    __shared__ float As[TS][TS];
    __shared__ float Bs[TS][TS + 1];  // +1 avoids bank conflicts on the column read
    int tx = threadIdx.x, ty = threadIdx.y;
    int row = blockIdx.y * TS + ty, col = blockIdx.x * TS + tx;
    float acc = 0.f;
    for (int k0 = 0; k0 < K; k0 += TS) {
        As[ty][tx] = (row < M && k0 + tx < K) ? A[(long long)row * K + k0 + tx] : 0.f;
        Bs[ty][tx] = (k0 + ty < K && col < N) ? B[(long long)(k0 + ty) * N + col] : 0.f;
        __syncthreads();
#pragma unroll
        for (int k = 0; k < TS; ++k) acc += As[ty][k] * Bs[k][tx];
        __syncthreads();
    }
    if (row < M && col < N) C[(long long)row * N + col] = acc;
}

template <int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
matmul_tiled_kernel(int M, int N, int K, const float* __restrict__ A, const float* __restrict__ B,
                    float* __restrict__ C) {
    constexpr int NT = (BM / TM) * (BN / TN);
    __shared__ float As[BK][BM];  // A tile stored transposed: the inner loop reads it along m
    __shared__ float Bs[BK][BN];
    const int tid = threadIdx.x;
    const int tr = tid / (BN / TN), tc = tid % (BN / TN);
    const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    float acc[TM][TN] = {};
    float a_reg[TM], b_reg[TN];
    for (int k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
        for (int i = tid; i < BM * BK; i += NT) {
            int m = i / BK, k = i % BK, gm = row0 + m, gk = k0 + k;
            As[k][m] = (gm < M && gk < K) ? A[(long long)gm * K + gk] : 0.f;
        }
#pragma unroll
        for (int i = tid; i < BK * BN; i += NT) {
            int k = i / BN, n = i % BN, gk = k0 + k, gn = col0 + n;
            Bs[k][n] = (gk < K && gn < N) ? B[(long long)gk * N + gn] : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
#pragma unroll
            for (int i = 0; i < TM; ++i) a_reg[i] = As[k][tr * TM + i];
#pragma unroll
            for (int j = 0; j < TN; ++j) b_reg[j] = Bs[k][tc * TN + j];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += a_reg[i] * b_reg[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        int gm = row0 + tr * TM + i;
        if (gm >= M) continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            int gn = col0 + tc * TN + j;
            if (gn < N) C[(long long)gm * N + gn] = acc[i][j];
        }
    }
}

extern "C" int matmul_smem(const float* A, const float* B, float* C, int M, int N, int K) {
    dim3 block(TS, TS), grid((N + TS - 1) / TS, (M + TS - 1) / TS);
    matmul_smem_kernel<<<grid, block>>>(M, N, K, A, B, C);
    return (int)cudaGetLastError();
}

extern "C" int matmul_tiled(const float* A, const float* B, float* C, int M, int N, int K) {
    constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8;
    dim3 block((BM / TM) * (BN / TN)), grid((N + BN - 1) / BN, (M + BM - 1) / BM);
    matmul_tiled_kernel<BM, BN, BK, TM, TN><<<grid, block>>>(M, N, K, A, B, C);
    return (int)cudaGetLastError();
}
