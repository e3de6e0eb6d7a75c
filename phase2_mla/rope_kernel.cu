// Rotary position embedding applied IN PLACE to q and k, from a cos/sin cache at arbitrary positions.
//
//   q [T, Hq, R] and k [T, Hk, R]: last dim contiguous, token and head strides free (so q may be the rope slice of a
//   wider head, as in MLA's q = [q_nope | q_pe]). cos, sin [max_pos, R/2] fp32. positions [T] int64.
//   half-rotation (Llama / GPT-NeoX): pair i is (x[i], x[i + R/2]);  interleaved (DeepSeek / GPT-J): (x[2i], x[2i+1]).
//   Each pair (a, b) at angle theta = pos * inv_freq[i] becomes (a cos - b sin, b cos + a sin), computed in fp32.
//
// NOTE (design): RoPE is a pure streaming op (read 2 numbers, write 2 numbers, a few FLOPs), so the only goal is to
// move bytes at copy speed. One CUDA block owns one token and walks q's then k's heads; each thread moves VEC pairs
// with one vector load per half (half layout) or one vector load of 2*VEC adjacent numbers (interleaved layout),
// 16 bytes per access when alignment allows. cos/sin rows are tiny and stay in L1/L2.
//
// Built as a plain shared library (nvcc -shared) and called through ctypes with raw pointers; see rope.py.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

template <typename T> __device__ __forceinline__ float to_f(T x) { return static_cast<float>(x); }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x) { return static_cast<T>(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T, int N> struct alignas(sizeof(T) * N) Vec { T v[N]; };

template <typename T, int VEC, bool INTERLEAVED>
__device__ __forceinline__ void rotate_row(T* row, const float* c, const float* s, int half, int tid, int nthreads) {
  // row points at one head's R = 2*half numbers; thread handles pairs [j, j + VEC).
  for (int j = tid * VEC; j < half; j += nthreads * VEC) {
    float cv[VEC], sv[VEC];
#pragma unroll
    for (int u = 0; u < VEC; ++u) { cv[u] = c[j + u]; sv[u] = s[j + u]; }
    if (INTERLEAVED && VEC == 1) {  // no alignment promise at all: two scalar accesses
      float a = to_f(row[2 * j]), b = to_f(row[2 * j + 1]);
      row[2 * j] = from_f<T>(a * cv[0] - b * sv[0]);
      row[2 * j + 1] = from_f<T>(b * cv[0] + a * sv[0]);
    } else if (INTERLEAVED) {
      Vec<T, 2 * VEC> x = *reinterpret_cast<Vec<T, 2 * VEC>*>(row + 2 * j);
#pragma unroll
      for (int u = 0; u < VEC; ++u) {
        float a = to_f(x.v[2 * u]), b = to_f(x.v[2 * u + 1]);
        x.v[2 * u] = from_f<T>(a * cv[u] - b * sv[u]);
        x.v[2 * u + 1] = from_f<T>(b * cv[u] + a * sv[u]);
      }
      *reinterpret_cast<Vec<T, 2 * VEC>*>(row + 2 * j) = x;
    } else {
      Vec<T, VEC> x1 = *reinterpret_cast<Vec<T, VEC>*>(row + j);
      Vec<T, VEC> x2 = *reinterpret_cast<Vec<T, VEC>*>(row + j + half);
#pragma unroll
      for (int u = 0; u < VEC; ++u) {
        float a = to_f(x1.v[u]), b = to_f(x2.v[u]);
        x1.v[u] = from_f<T>(a * cv[u] - b * sv[u]);
        x2.v[u] = from_f<T>(b * cv[u] + a * sv[u]);
      }
      *reinterpret_cast<Vec<T, VEC>*>(row + j) = x1;
      *reinterpret_cast<Vec<T, VEC>*>(row + j + half) = x2;
    }
  }
}

template <typename T, int VEC, bool INTERLEAVED>
__global__ void rope_kernel(T* __restrict__ q, T* __restrict__ k, const int64_t* __restrict__ pos,
                            const float* __restrict__ cos_cache, const float* __restrict__ sin_cache, int hq, int hk,
                            int half, int64_t q_st, int64_t q_sh, int64_t k_st, int64_t k_sh) {
  const int t = blockIdx.x;
  const int64_t p = pos[t];
  const float* c = cos_cache + p * half;
  const float* s = sin_cache + p * half;
  // Threads are split into groups of `lanes` (enough to cover one row with VEC pairs each); groups stride heads.
  const int lanes = min((int)blockDim.x, max(1, half / VEC));
  const int groups = blockDim.x / lanes;
  const int lane = threadIdx.x % lanes, group = threadIdx.x / lanes;
  if (group >= groups) return;
  for (int h = group; h < hq + hk; h += groups) {
    T* row = h < hq ? q + t * q_st + h * q_sh : k + t * k_st + (h - hq) * k_sh;
    rotate_row<T, VEC, INTERLEAVED>(row, c, s, half, lane, lanes);
  }
}

template <typename T, int VEC>
static cudaError_t launch_t(void* q, void* k, const int64_t* pos, const float* c, const float* s, int T_, int hq,
                            int hk, int half, int64_t q_st, int64_t q_sh, int64_t k_st, int64_t k_sh, int interleaved,
                            cudaStream_t stream) {
  int threads = 128;
  if (interleaved)
    rope_kernel<T, VEC, true><<<T_, threads, 0, stream>>>((T*)q, (T*)k, pos, c, s, hq, hk, half, q_st, q_sh, k_st, k_sh);
  else
    rope_kernel<T, VEC, false><<<T_, threads, 0, stream>>>((T*)q, (T*)k, pos, c, s, hq, hk, half, q_st, q_sh, k_st, k_sh);
  return cudaGetLastError();
}

template <typename T>
static cudaError_t dispatch_vec(int vec, void* q, void* k, const int64_t* pos, const float* c, const float* s, int T_,
                                int hq, int hk, int half, int64_t q_st, int64_t q_sh, int64_t k_st, int64_t k_sh,
                                int interleaved, cudaStream_t st) {
  switch (vec) {
    case 8: return launch_t<T, 8>(q, k, pos, c, s, T_, hq, hk, half, q_st, q_sh, k_st, k_sh, interleaved, st);
    case 4: return launch_t<T, 4>(q, k, pos, c, s, T_, hq, hk, half, q_st, q_sh, k_st, k_sh, interleaved, st);
    case 2: return launch_t<T, 2>(q, k, pos, c, s, T_, hq, hk, half, q_st, q_sh, k_st, k_sh, interleaved, st);
    default: return launch_t<T, 1>(q, k, pos, c, s, T_, hq, hk, half, q_st, q_sh, k_st, k_sh, interleaved, st);
  }
}

// dtype: 0 = float32, 1 = float16, 2 = bfloat16. vec: pairs per thread (the caller checks alignment). Strides in
// elements. Returns a cudaError_t (0 = success).
extern "C" int titan_rope_inplace(void* q, void* k, const int64_t* pos, const float* cos_cache,
                                  const float* sin_cache, int num_tokens, int hq, int hk, int rot_dim, int64_t q_st,
                                  int64_t q_sh, int64_t k_st, int64_t k_sh, int dtype, int interleaved, int vec,
                                  void* stream) {
  if (num_tokens == 0) return 0;
  const int half = rot_dim / 2;
  cudaStream_t st = (cudaStream_t)stream;
  switch (dtype) {
    case 0: return dispatch_vec<float>(vec, q, k, pos, cos_cache, sin_cache, num_tokens, hq, hk, half, q_st, q_sh,
                                       k_st, k_sh, interleaved, st);
    case 1: return dispatch_vec<__half>(vec, q, k, pos, cos_cache, sin_cache, num_tokens, hq, hk, half, q_st, q_sh,
                                        k_st, k_sh, interleaved, st);
    case 2: return dispatch_vec<__nv_bfloat16>(vec, q, k, pos, cos_cache, sin_cache, num_tokens, hq, hk, half, q_st,
                                               q_sh, k_st, k_sh, interleaved, st);
    default: return (int)cudaErrorInvalidValue;
  }
}
