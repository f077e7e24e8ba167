//! CUDA C source of the frame kernels, compiled with NVRTC at first use.
//!
//! Each kernel computes exactly what its CPU twin in [`crate::frames`] computes (same
//! integer formulas), so GPU and CPU results are compared for equality.

/// Names of the kernels in [`SOURCE`], loaded after compilation.
pub const NAMES: [&str; 6] = [
    "yuv420_to_rgb",
    "box_halve",
    "bilinear",
    "histogram256",
    "abs_diff_sum",
    "area_mean",
];

/// The kernels. Threads map to output pixels; 2-D launches use 16x16 blocks.
pub const SOURCE: &str = r#"
__device__ __forceinline__ unsigned char clamp_u8(int v) {
    return (unsigned char)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

extern "C" __global__ void yuv420_to_rgb(
    const unsigned char* y, int y_stride,
    const unsigned char* u, int u_stride,
    const unsigned char* v, int v_stride,
    int interleaved, int full_range,
    unsigned char* rgb, int width, int height)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int row = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= width || row >= height) return;
    int Y = y[(unsigned long long)row * y_stride + x];
    int cr = row / 2;
    int U, V;
    if (interleaved) {
        unsigned long long b = (unsigned long long)cr * u_stride + (x / 2) * 2;
        U = u[b];
        V = u[b + 1];
    } else {
        U = u[(unsigned long long)cr * u_stride + x / 2];
        V = v[(unsigned long long)cr * v_stride + x / 2];
    }
    int d = U - 128, e = V - 128;
    int r, g, b;
    if (full_range) {
        int c = 256 * Y;
        r = (c + 359 * e + 128) >> 8;
        g = (c - 88 * d - 183 * e + 128) >> 8;
        b = (c + 454 * d + 128) >> 8;
    } else {
        int c = 298 * (Y - 16);
        r = (c + 409 * e + 128) >> 8;
        g = (c - 100 * d - 208 * e + 128) >> 8;
        b = (c + 516 * d + 128) >> 8;
    }
    unsigned char* o = rgb + ((size_t)row * width + x) * 3;
    o[0] = clamp_u8(r);
    o[1] = clamp_u8(g);
    o[2] = clamp_u8(b);
}

extern "C" __global__ void box_halve(
    const unsigned char* src, int w, int h, int ch,
    unsigned char* dst, int ow, int oh)
{
    int ox = blockIdx.x * blockDim.x + threadIdx.x;
    int oy = blockIdx.y * blockDim.y + threadIdx.y;
    if (ox >= ow || oy >= oh) return;
    int x0 = min(ox * 2, w - 1), x1 = min(ox * 2 + 1, w - 1);
    int y0 = min(oy * 2, h - 1), y1 = min(oy * 2 + 1, h - 1);
    for (int c = 0; c < ch; c++) {
        unsigned int s = src[((size_t)y0 * w + x0) * ch + c] + src[((size_t)y0 * w + x1) * ch + c]
                       + src[((size_t)y1 * w + x0) * ch + c] + src[((size_t)y1 * w + x1) * ch + c];
        dst[((size_t)oy * ow + ox) * ch + c] = (unsigned char)((s + 2) >> 2);
    }
}

__device__ __forceinline__ unsigned int src_coord_fp(unsigned int d, unsigned int src, unsigned int dst) {
    unsigned long long num = (2ULL * d + 1ULL) * (unsigned long long)src * 256ULL;
    long long pos = (long long)(num / (2ULL * dst)) - 128;
    long long hi = (long long)(src - 1) * 256;
    if (pos < 0) pos = 0;
    if (pos > hi) pos = hi;
    return (unsigned int)pos;
}

extern "C" __global__ void bilinear(
    const unsigned char* src, int w, int h, int ch,
    unsigned char* dst, int dw, int dh)
{
    int dx = blockIdx.x * blockDim.x + threadIdx.x;
    int dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= dw || dy >= dh) return;
    unsigned int fx_fp = src_coord_fp(dx, w, dw);
    unsigned int fy_fp = src_coord_fp(dy, h, dh);
    int x0 = fx_fp >> 8, y0 = fy_fp >> 8;
    int x1 = min(x0 + 1, w - 1), y1 = min(y0 + 1, h - 1);
    unsigned int fx = fx_fp & 255, fy = fy_fp & 255;
    for (int c = 0; c < ch; c++) {
        unsigned int p00 = src[((size_t)y0 * w + x0) * ch + c];
        unsigned int p01 = src[((size_t)y0 * w + x1) * ch + c];
        unsigned int p10 = src[((size_t)y1 * w + x0) * ch + c];
        unsigned int p11 = src[((size_t)y1 * w + x1) * ch + c];
        unsigned int top = p00 * (256 - fx) + p01 * fx;
        unsigned int bottom = p10 * (256 - fx) + p11 * fx;
        dst[((size_t)dy * dw + dx) * ch + c] =
            (unsigned char)((top * (256 - fy) + bottom * fy + 32768) >> 16);
    }
}

extern "C" __global__ void area_mean(
    const unsigned char* src, int stride, int w, int h,
    unsigned char* dst, int dw, int dh)
{
    int dx = blockIdx.x * blockDim.x + threadIdx.x;
    int dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= dw || dy >= dh) return;
    int x0 = (int)((long long)dx * w / dw), x1 = (int)((long long)(dx + 1) * w / dw);
    int y0 = (int)((long long)dy * h / dh), y1 = (int)((long long)(dy + 1) * h / dh);
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= y0) y1 = y0 + 1;
    unsigned int sum = 0;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++)
            sum += src[(size_t)y * stride + x];
    unsigned int n = (unsigned int)((x1 - x0) * (y1 - y0));
    dst[(size_t)dy * dw + dx] = (unsigned char)((sum + n / 2) / n);
}

extern "C" __global__ void histogram256(const unsigned char* img, int n, unsigned int* hist) {
    __shared__ unsigned int local[256];
    for (int i = threadIdx.x; i < 256; i += blockDim.x) local[i] = 0;
    __syncthreads();
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < (unsigned long long)n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        atomicAdd(&local[img[i]], 1u);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
        if (local[i]) atomicAdd(&hist[i], local[i]);
    }
}

extern "C" __global__ void abs_diff_sum(
    const unsigned char* a, const unsigned char* b, int n, unsigned long long* out)
{
    __shared__ unsigned long long partial[256];
    unsigned long long s = 0;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < (unsigned long long)n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        int d = (int)a[i] - (int)b[i];
        s += (unsigned long long)(d < 0 ? -d : d);
    }
    partial[threadIdx.x] = s;
    __syncthreads();
    for (int step = blockDim.x / 2; step > 0; step >>= 1) {
        if (threadIdx.x < step) partial[threadIdx.x] += partial[threadIdx.x + step];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(out, partial[0]);
}
"#;
