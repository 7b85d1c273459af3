/* The paper's training input in one pass per image, for alexnet.data.augment.crop_normalize.
 *
 * For image i of a uint8 batch x (B, C, H, W), contiguous:
 *
 *   out[i, c, r, j] = x[i, c, top+r, left+j'] * s[c] - m[c, top+r, left+j'] + sh[i, c]
 *
 * with j' = j, or size-1-j where the image is mirrored; m is the mean image already multiplied by
 * s (1/std; a per-channel mean is an M x 1 x 1 "image": mh = mw = 1), and sh the colour shift
 * (PCA noise) also multiplied by s. Each output element is written once and each input element
 * read once: the per-image PyTorch path takes three passes over the crop.
 *
 * The output is NCHW, or channels_last (NHWC in memory), the layout the model takes: written once,
 * in place, instead of NCHW and then copied (a second batch-sized buffer).
 *
 * The arithmetic is the PyTorch path's, in the same order and without fused multiply-adds, so the
 * two give bitwise equal results (tested). Work is a range of images [i0, i1) so that Python
 * threads can share a batch; ctypes releases the GIL.
 */
#include <stdint.h>

#if defined(__clang__)
#pragma clang fp contract(off)
#define NO_FMA
#elif defined(__GNUC__)
#define NO_FMA __attribute__((optimize("fp-contract=off")))
#else
#define NO_FMA
#endif

NO_FMA static void row_plain(const uint8_t *restrict src, const float *restrict m, long mstep, float s, float sh,
                             float *restrict dst, long n) {
    if (mstep) {
        for (long j = 0; j < n; j++) dst[j] = ((float)src[j] * s - m[j]) + sh;
    } else {
        const float m0 = m[0];
        for (long j = 0; j < n; j++) dst[j] = ((float)src[j] * s - m0) + sh;
    }
}

/* A mirrored row: the plain row into a buffer, then reversed (both loops vectorise; the fused
 * reversed loop with a uint8 source does not). */
static void row_mirror(const uint8_t *restrict src, const float *restrict m, long mstep, float s, float sh,
                       float *restrict dst, long n, float *restrict tmp) {
    row_plain(src, m, mstep, s, sh, tmp, n);
    for (long j = 0; j < n; j++) dst[j] = tmp[n - 1 - j];
}

/* A channel's row into an NHWC output row: every c-th float (mirrored: from the right). */
static void scatter_row(const float *restrict row, float *restrict dst, long n, long c, int mirrored) {
    if (mirrored)
        for (long j = 0; j < n; j++) dst[(n - 1 - j) * c] = row[j];
    else
        for (long j = 0; j < n; j++) dst[j * c] = row[j];
}

/* One image into NCHW out: a plane per channel. */
static void image_nchw(const uint8_t *x, long c, long h, long w, const float *mean, long mh, long mw, int mean_image,
                       const float *inv_std, const float *sh, long t, long l, int mirrored, long size, float *out,
                       float *tmp) {
    for (long ch = 0; ch < c; ch++) {
        const uint8_t *src = x + (ch * h + t) * w + l;
        const float *m = mean_image ? mean + (ch * mh + t) * mw + l : mean + ch;
        float *dst = out + ch * size * size;
        const float s = inv_std[ch], shc = sh ? sh[ch] : 0.0f;
        for (long r = 0; r < size; r++) {
            if (mirrored)
                row_mirror(src + r * w, mean_image ? m + r * mw : m, mean_image, s, shc, dst + r * size, size, tmp);
            else
                row_plain(src + r * w, mean_image ? m + r * mw : m, mean_image, s, shc, dst + r * size, size);
        }
    }
}

/* One image into NHWC out (channels_last: the model's layout): row by row, each channel's row made
 * as in image_nchw (the same arithmetic) and interleaved while it is in cache. */
static void image_nhwc(const uint8_t *x, long c, long h, long w, const float *mean, long mh, long mw, int mean_image,
                       const float *inv_std, const float *sh, long t, long l, int mirrored, long size, float *out,
                       float *tmp) {
    for (long r = 0; r < size; r++) {
        float *dst = out + r * size * c;
        for (long ch = 0; ch < c; ch++) {
            const uint8_t *src = x + (ch * h + t + r) * w + l;
            const float *m = mean_image ? mean + (ch * mh + t + r) * mw + l : mean + ch;
            row_plain(src, m, mean_image, inv_std[ch], sh ? sh[ch] : 0.0f, tmp, size);
            scatter_row(tmp, dst + ch, size, c, mirrored);
        }
    }
}

/* x: (B, C, H, W) uint8; mean: (C, mh, mw) float32, scaled (mh = H, mw = W, or both 1);
 * inv_std: (C); shift: (B, C) scaled, or NULL; top, left: (B) int64; flip: (B) uint8 or NULL;
 * out: (B, C, size, size) float32, NCHW, or with nhwc its channels_last layout (B, size, size, C
 * in memory). Crop i is cut from image i / repeat (repeat > 1: that many crops of each image, adjacent,
 * as the ten test views; top, left, flip, shift and out have an entry per crop, x one per image).
 * Returns 0, or 2 on a crop outside the image (or size > 1024). */
int crop_normalize_u8(const uint8_t *x, long c, long h, long w, const float *mean, long mh, long mw,
                      const float *inv_std, const float *shift, const int64_t *top, const int64_t *left,
                      const uint8_t *flip, long size, float *out, long nhwc, long repeat, long i0, long i1) {
    const int mean_image = mh > 1 || mw > 1;
    float tmp[1024];
    if (size > 1024 || repeat < 1) return 2;
    for (long i = i0; i < i1; i++) {
        const long t = top[i], l = left[i];
        if (t < 0 || l < 0 || t + size > h || l + size > w) return 2;
        const int mirrored = flip != 0 && flip[i];
        const float *sh = shift ? shift + i * c : 0;
        (nhwc ? image_nhwc : image_nchw)(x + (i / repeat) * c * h * w, c, h, w, mean, mh, mw, mean_image, inv_std, sh, t, l,
                                         mirrored, size, out + i * c * size * size, tmp);
    }
    return 0;
}
