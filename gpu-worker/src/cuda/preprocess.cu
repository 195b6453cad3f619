// GPU preprocessing of raw frames: colour conversion, resize and normalize in
// one pass, straight into the model's input tensor (NCHW). Compiled at
// start-up by NVRTC (no nvcc at build time). `src/cuda/reference.rs` computes
// exactly the same thing on the CPU; the GPU test compares the two.
//
// Resize is a separable triangle (bilinear) filter whose support widens with
// the downscale factor, as Pillow's and fast_image_resize's bilinear
// convolution do, so shrinking a 1280x720 frame to 224x224 averages the
// pixels it covers instead of sampling 4 of them (no aliasing). Pixel centres
// are at +0.5 (half-pixel convention).
//
// One thread per output pixel writes all three channels; threads of a warp
// take neighbouring output pixels of one row, so their source windows
// overlap and the loads coalesce.

// Source pixel formats (keep in step with `PixelFormat` in kernels.rs).
#define FMT_RGB24 0
#define FMT_BGR24 1
#define FMT_NV12 2

struct Frame {
    const unsigned char* data;  // device pointer to the frame
    int width;
    int height;
    int stride;  // bytes per row (of the Y plane for NV12)
    int format;
};

struct Norm {
    // out = (pixel / 255 - mean) / std  ==  pixel * scale + bias
    float scale[3];
    float bias[3];
    int bgr;  // 1: write channels in B, G, R order
};

__device__ __forceinline__ float clamp255(float v) { return fminf(fmaxf(v, 0.f), 255.f); }

// BT.601 limited range (what decoders and cameras emit for SD and most HD).
__device__ __forceinline__ void yuv_to_rgb(float y, float u, float v, float* rgb) {
    float c = 1.164383f * (y - 16.f);
    float d = u - 128.f;
    float e = v - 128.f;
    rgb[0] = clamp255(c + 1.596027f * e);
    rgb[1] = clamp255(c - 0.391762f * d - 0.812968f * e);
    rgb[2] = clamp255(c + 2.017232f * d);
}

__device__ __forceinline__ void load_rgb(const Frame& f, int x, int y, float* rgb) {
    if (f.format == FMT_NV12) {
        const unsigned char* yplane = f.data;
        const unsigned char* uv = f.data + (size_t)f.stride * f.height;
        float yy = yplane[(size_t)y * f.stride + x];
        size_t c = (size_t)(y >> 1) * f.stride + (x & ~1);
        yuv_to_rgb(yy, uv[c], uv[c + 1], rgb);
    } else {
        const unsigned char* p = f.data + (size_t)y * f.stride + 3 * (size_t)x;
        if (f.format == FMT_BGR24) {
            rgb[0] = p[2]; rgb[1] = p[1]; rgb[2] = p[0];
        } else {
            rgb[0] = p[0]; rgb[1] = p[1]; rgb[2] = p[2];
        }
    }
}

// Filter window of output coordinate `o` along an axis scaled by `scale`
// (source / output): first source index, count, and the weight of index i is
// tri((i + 0.5 - centre) / support) normalised by the window's sum.
__device__ __forceinline__ void window(int o, float scale, int n, float* centre, float* support, int* first, int* last) {
    float s = fmaxf(scale, 1.f);
    *centre = (o + 0.5f) * scale;
    *support = s;
    *first = max((int)floorf(*centre - s), 0);
    *last = min((int)ceilf(*centre + s), n - 1);
}

__device__ __forceinline__ float tri(float x) { x = fabsf(x); return x < 1.f ? 1.f - x : 0.f; }

template <typename T>
__device__ __forceinline__ void store(T* p, float v);
template <>
__device__ __forceinline__ void store<float>(float* p, float v) { *p = v; }
// FP16 as its bit pattern (NVRTC has no cuda_fp16.h without the toolkit's
// headers): round to nearest even, as __float2half_rn does.
typedef unsigned short half_bits;
template <>
__device__ __forceinline__ void store<half_bits>(half_bits* p, float v) {
    half_bits h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    *p = h;
}

template <typename T>
__device__ void resize_normalize(Frame f, Norm n, T* out, int out_w, int out_h) {
    int ox = blockIdx.x * blockDim.x + threadIdx.x;
    int oy = blockIdx.y * blockDim.y + threadIdx.y;
    if (ox >= out_w || oy >= out_h) return;
    float sx = (float)f.width / out_w, sy = (float)f.height / out_h;
    float cx, cy, wx, wy;
    int x0, x1, y0, y1;
    window(ox, sx, f.width, &cx, &wx, &x0, &x1);
    window(oy, sy, f.height, &cy, &wy, &y0, &y1);
    float acc[3] = {0.f, 0.f, 0.f};
    float wsum = 0.f;
    for (int y = y0; y <= y1; ++y) {
        float ky = tri((y + 0.5f - cy) / wy);
        if (ky == 0.f) continue;
        for (int x = x0; x <= x1; ++x) {
            float k = ky * tri((x + 0.5f - cx) / wx);
            if (k == 0.f) continue;
            float rgb[3];
            load_rgb(f, x, y, rgb);
            acc[0] += k * rgb[0];
            acc[1] += k * rgb[1];
            acc[2] += k * rgb[2];
            wsum += k;
        }
    }
    float inv = wsum > 0.f ? 1.f / wsum : 0.f;
    size_t plane = (size_t)out_w * out_h;
    size_t at = (size_t)oy * out_w + ox;
    for (int c = 0; c < 3; ++c) {
        int src = n.bgr ? 2 - c : c;
        store(out + c * plane + at, acc[src] * inv * n.scale[c] + n.bias[c]);
    }
}

extern "C" __global__ void resize_normalize_f32(Frame f, Norm n, float* out, int out_w, int out_h) {
    resize_normalize<float>(f, n, out, out_w, out_h);
}

extern "C" __global__ void resize_normalize_f16(Frame f, Norm n, half_bits* out, int out_w, int out_h) {
    resize_normalize<half_bits>(f, n, out, out_w, out_h);
}
