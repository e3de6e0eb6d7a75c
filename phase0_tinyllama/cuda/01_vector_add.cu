// 01 — vector add: the "hello world" of CUDA. One thread per element, a grid-stride loop so any n works.
// Memory-bound: 12 bytes move per FLOP, so its speed is the HBM bandwidth, never the ALUs.
#include <cuda_runtime.h>

__global__ void vector_add_kernel(const float* __restrict__ a, const float* __restrict__ b,
                                  float* __restrict__ c, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        c[i] = a[i] + b[i];
    }
}

extern "C" int vector_add(const float* a, const float* b, float* c, long long n) {
    const int threads = 256;
    long long blocks = (n + threads - 1) / threads;
    if (blocks > 65535LL * 16) blocks = 65535LL * 16;  // the grid-stride loop covers the rest
    vector_add_kernel<<<(unsigned)blocks, threads>>>(a, b, c, n);
    return (int)cudaGetLastError();
}
