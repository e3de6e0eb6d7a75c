// 02 — naive matmul, C[M,N] = A[M,K] @ B[K,N], fp32, row-major.
// One thread per output element; threadIdx.x walks columns so that a warp reads B coalesced and A by broadcast.
// Every thread reads a whole row of A and column of B from global memory: 2*K loads per 2*K FLOPs, an arithmetic
// intensity of ~0.25 FLOP/byte before caches step in. Caches save it from being hopeless, not from being slow.
#include <cuda_runtime.h>

__global__ void matmul_naive_kernel(int M, int N, int K, const float* __restrict__ A,
                                    const float* __restrict__ B, float* __restrict__ C) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    int row = blockIdx.y * blockDim.y + threadIdx.y;
    if (row >= M || col >= N) return;
    float acc = 0.f;
    for (int k = 0; k < K; ++k) acc += A[(long long)row * K + k] * B[(long long)k * N + col];
    C[(long long)row * N + col] = acc;
}

extern "C" int matmul_naive(const float* A, const float* B, float* C, int M, int N, int K) {
    dim3 block(32, 8);
    dim3 grid((N + block.x - 1) / block.x, (M + block.y - 1) / block.y);
    matmul_naive_kernel<<<grid, block>>>(M, N, K, A, B, C);
    return (int)cudaGetLastError();
}
