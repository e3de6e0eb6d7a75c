// 03 — tiled matmul, C[M,N] = A[M,K] @ B[K,N], fp32, row-major. Two steps of the same idea:
//
//  (a) matmul_smem: 32x32 tiles of A and B staged in shared memory; each loaded element is reused 32 times.
//  (b) matmul_tiled: a 128x128 block tile, BK=8, and an 8x8 register tile per thread (256 threads). Each value
//      loaded from shared memory now feeds 8 FMAs, so the kernel stops being bound by shared-memory bandwidth.
//      Arithmetic intensity per block: 2*128*128*8 FLOPs per (128+128)*8*4 bytes = 16 FLOP/byte from global.
//      When M, N are multiples of 128 and K of 8 the launcher takes the float4 variant: 16-byte global loads and
//      stores, 16-byte shared-memory reads of the register tiles (4x fewer load instructions).
// The general kernel checks bounds on every load and store, so any M, N, K works (zeros pad the edge tiles).
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

// Vectorised variant: requires M % 128 == 0, N % 128 == 0, K % 8 == 0 (so every float4 is in bounds and aligned).
__global__ void __launch_bounds__(256)
matmul_tiled_vec_kernel(int M, int N, int K, const float* __restrict__ A, const float* __restrict__ B,
                        float* __restrict__ C) {
    constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8;
    __shared__ __align__(16) float As[BK][BM];
    __shared__ __align__(16) float Bs[BK][BN];
    const int tid = threadIdx.x;
    const int tr = tid / (BN / TN), tc = tid % (BN / TN);
    const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    const int a_row = tid / 2, a_col = (tid % 2) * 4;    // 128 rows x 2 float4 of the A tile
    const int b_row = tid / 32, b_col = (tid % 32) * 4;  // 8 rows x 32 float4 of the B tile
    const float* a_ptr = A + (long long)(row0 + a_row) * K + a_col;
    const float* b_ptr = B + (long long)b_row * N + col0 + b_col;
    float acc[TM][TN] = {};
    float a_reg[TM], b_reg[TN];
    for (int k0 = 0; k0 < K; k0 += BK) {
        float4 av = *reinterpret_cast<const float4*>(a_ptr + k0);
        As[a_col + 0][a_row] = av.x;
        As[a_col + 1][a_row] = av.y;
        As[a_col + 2][a_row] = av.z;
        As[a_col + 3][a_row] = av.w;
        *reinterpret_cast<float4*>(&Bs[b_row][b_col]) =
            *reinterpret_cast<const float4*>(b_ptr + (long long)k0 * N);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            *reinterpret_cast<float4*>(&a_reg[0]) = *reinterpret_cast<const float4*>(&As[k][tr * TM]);
            *reinterpret_cast<float4*>(&a_reg[4]) = *reinterpret_cast<const float4*>(&As[k][tr * TM + 4]);
            *reinterpret_cast<float4*>(&b_reg[0]) = *reinterpret_cast<const float4*>(&Bs[k][tc * TN]);
            *reinterpret_cast<float4*>(&b_reg[4]) = *reinterpret_cast<const float4*>(&Bs[k][tc * TN + 4]);
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += a_reg[i] * b_reg[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        float* c_ptr = C + (long long)(row0 + tr * TM + i) * N + col0 + tc * TN;
        *reinterpret_cast<float4*>(c_ptr) = make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
        *reinterpret_cast<float4*>(c_ptr + 4) = make_float4(acc[i][4], acc[i][5], acc[i][6], acc[i][7]);
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
    bool aligned = ((unsigned long long)A % 16 == 0) && ((unsigned long long)B % 16 == 0) &&
                   ((unsigned long long)C % 16 == 0);
    if (aligned && M % BM == 0 && N % BN == 0 && K % BK == 0)
        matmul_tiled_vec_kernel<<<grid, block>>>(M, N, K, A, B, C);
    else
        matmul_tiled_kernel<BM, BN, BK, TM, TN><<<grid, block>>>(M, N, K, A, B, C);
    return (int)cudaGetLastError();
}
