/* Fused local response normalisation over channels, forward and backward, for alexnet.lrn.
 *
 * A tensor is seen as (outer, C, inner) with the channel stride = inner: NCHW contiguous is
 * (N, C, H*W) and channels_last is (N*H*W, C, 1). Work is cut into "tasks" (one outer index and
 * one block of BLK inner positions) so that Python threads can share it; ctypes drops the GIL.
 *
 * Forward reads x once and writes y once; nothing is saved. Backward recomputes the denominator
 * from x (a few multiply-adds per element are cheaper than a round trip through memory) and
 * reads g and x once, writing the gradient once.
 *
 *   d_c = k + alpha * sum_{m=c-before}^{c+after} x_m^2,   y_c = x_c * d_c^-beta
 *   dx_i = g_i d_i^-beta - 2 alpha beta x_i * sum_{j=i-after}^{i+before} g_j x_j d_j^(-beta-1)
 *
 * With relu = 1 the kernel computes LRN(ReLU(a)) from a (the paper applies LRN after the ReLU):
 * the ReLU costs no pass over memory of its own, forward or backward.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLK 128

static inline float bf16_load(const uint16_t *p) {
    uint32_t u = ((uint32_t)*p) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline void bf16_store(uint16_t *p, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) { *p = (uint16_t)((u >> 16) | 0x40); return; } /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    *p = (uint16_t)(u >> 16);
}

/* scale s = d^-beta and s/d; beta = 0.75 (the paper's) is rsqrt(d) * sqrt(rsqrt(d)), which
 * vectorises, instead of pow, which does not. */
#define POWS(ACC, d, s, sd, beta, is075)                                   \
    do {                                                                   \
        if (is075) {                                                       \
            ACC r_ = (ACC)1 / SQRT(d);                                     \
            s = r_ * SQRT(r_);                                             \
            sd = s * r_ * r_;                                              \
        } else {                                                           \
            s = POW(d, -(beta));                                           \
            sd = s / (d);                                                  \
        }                                                                  \
    } while (0)

#define INLINE static inline __attribute__((always_inline))

/* Blocks: NCHW-like blocks are C x nb positions with channel stride cs (loops over b innermost,
 * vectorised); channels_last blocks are one position with C contiguous channels (loops over c
 * innermost). `is075` is a literal at every call so each variant is compiled without the branch.
 * Scratch: w[C + 2 pad] (x nb), sq/tt[(C + 2 pad) x nb], sc[C x nb]. */
#define DEFINE_LRN(NAME, T, ACC, LOAD, STORE)                                                          \
/* x as the LRN sees it: relu(x) when fused with the ReLU before it */                                \
INLINE ACC NAME##_lx(const T *p, int relu) { ACC v = LOAD(p); return relu && !(v > 0) && v == v ? 0 : v; } \
/* the ReLU's backward: no gradient where its input was not positive */                               \
INLINE ACC NAME##_gate(const T *p, int relu, ACC grad) { return relu && !(LOAD(p) > 0) ? 0 : grad; }   \
/* sq row pad + c = squares of channel c for nb positions (NCHW block), once per block; the pad  \
 * rows above and below are zeroed (a shorter last block would otherwise see old squares). */       \
INLINE void NAME##_sq_nchw(const T *x, long C, long cs, long nb, int pad, int relu, ACC *sq) {       \
    for (long p = 0; p < pad * nb; p++) sq[p] = sq[(pad + C) * nb + p] = 0;                           \
    for (long c = 0; c < C; c++)                                                                      \
        for (long b = 0; b < nb; b++) { ACC v = NAME##_lx(x + c * cs + b, relu); sq[(pad + c) * nb + b] = v * v; } \
}                                                                                                     \
/* w[b] = sum of squares over the window of channel c, from the rows of NAME##_sq_nchw */          \
INLINE void NAME##_win_nchw(const ACC *sq, long c, long nb, int before, int after, int pad, ACC *w) {  \
    for (long b = 0; b < nb; b++) w[b] = 0;                                                           \
    for (int m = -before; m <= after; m++) {                                                          \
        const ACC *row = sq + (pad + c + m) * nb;                                                     \
        for (long b = 0; b < nb; b++) w[b] += row[b];                                                 \
    }                                                                                                 \
}                                                                                                     \
/* w[j] = sum of squares over the window of every channel of one position (channels_last). With   \
 * G groups of Cg = C / G channels (the towers), channel c of group g sits at j = g * (Cg + pad) + c  \
 * in a layout with pad zeros before, between and after the groups, so that one vectorised loop over \
 * all of them never lets a window cross into another group. */                                       \
INLINE void NAME##_win_cl(const T *x, long C, long G, int before, int after, int pad, int relu,      \
                          ACC *sq, ACC *w) {                                                          \
    const long cg = C / G, S = cg + pad, n = G * S;                                                   \
    for (long g = 0; g < G; g++)                                                                      \
        for (long c = 0; c < cg; c++) { ACC v = NAME##_lx(x + g * cg + c, relu); sq[pad + g * S + c] = v * v; } \
    for (long j = 0; j < n; j++) w[j] = 0;                                                            \
    for (int m = -before; m <= after; m++)                                                            \
        for (long j = 0; j < n; j++) w[j] += sq[pad + j + m];                                         \
}                                                                                                     \
INLINE void NAME##_fwd_nchw(const T *x, T *y, long C, long cs, long nb, int before, int after,        \
                            int pad, ACC alpha, ACC beta, ACC k, int is075, int relu, ACC *sq, ACC *w) { \
    NAME##_sq_nchw(x, C, cs, nb, pad, relu, sq);                                                      \
    for (long c = 0; c < C; c++) {                                                                    \
        NAME##_win_nchw(sq, c, nb, before, after, pad, w);                                            \
        for (long b = 0; b < nb; b++) {                                                               \
            ACC d = k + alpha * w[b], s, sd;                                                          \
            POWS(ACC, d, s, sd, beta, is075);                                                         \
            (void)sd;                                                                                 \
            STORE(y + c * cs + b, NAME##_lx(x + c * cs + b, relu) * s);                                          \
        }                                                                                             \
    }                                                                                                 \
}                                                                                                     \
INLINE void NAME##_fwd_cl(const T *x, T *y, long C, long G, int before, int after, int pad, ACC alpha, \
                          ACC beta, ACC k, int is075, int relu, ACC *sq, ACC *w) {                    \
    const long cg = C / G, S = cg + pad;                                                              \
    NAME##_win_cl(x, C, G, before, after, pad, relu, sq, w);                                          \
    for (long g = 0; g < G; g++)                                                                      \
        for (long c = 0; c < cg; c++) {                                                               \
            ACC d = k + alpha * w[g * S + c], s, sd;                                                  \
            POWS(ACC, d, s, sd, beta, is075);                                                         \
            (void)sd;                                                                                 \
            STORE(y + g * cg + c, NAME##_lx(x + g * cg + c, relu) * s);                               \
        }                                                                                             \
}                                                                                                     \
INLINE void NAME##_bwd_nchw(const T *x, const T *g, T *r, long C, long cs, long nb, int before,       \
                            int after, int pad, ACC alpha, ACC beta, ACC k, ACC c2, int is075, int relu, \
                            ACC *sq, ACC *w, ACC *tt, ACC *sc) {                                      \
    NAME##_sq_nchw(x, C, cs, nb, pad, relu, sq);                                                      \
    for (long c = 0; c < C; c++) {                                                                    \
        NAME##_win_nchw(sq, c, nb, before, after, pad, w);                                            \
        ACC *t = tt + (pad + c) * nb, *sv = sc + c * nb;                                              \
        for (long b = 0; b < nb; b++) {                                                               \
            ACC d = k + alpha * w[b], s, sd;                                                          \
            POWS(ACC, d, s, sd, beta, is075);                                                         \
            sv[b] = s;                                                                                \
            t[b] = LOAD(g + c * cs + b) * NAME##_lx(x + c * cs + b, relu) * sd;                                  \
        }                                                                                             \
    }                                                                                                 \
    for (long c = 0; c < C; c++) {                                                                    \
        for (long b = 0; b < nb; b++) w[b] = 0;                                                       \
        for (int m = -after; m <= before; m++) {                                                      \
            const ACC *t = tt + (pad + c + m) * nb;                                                   \
            for (long b = 0; b < nb; b++) w[b] += t[b];                                               \
        }                                                                                             \
        for (long b = 0; b < nb; b++)                                                                 \
            STORE(r + c * cs + b, NAME##_gate(x + c * cs + b, relu, LOAD(g + c * cs + b) * sc[c * nb + b] - c2 * NAME##_lx(x + c * cs + b, relu) * w[b])); \
    }                                                                                                 \
}                                                                                                     \
INLINE void NAME##_bwd_cl(const T *x, const T *g, T *r, long C, long G, int before, int after,       \
                          int pad, ACC alpha, ACC beta, ACC k, ACC c2, int is075, int relu, ACC *sq,  \
                          ACC *w, ACC *tt, ACC *sc) {                                                 \
    const long cg = C / G, S = cg + pad, n = G * S;                                                   \
    NAME##_win_cl(x, C, G, before, after, pad, relu, sq, w);                                          \
    for (long q = 0; q < G; q++)                                                                      \
        for (long c = 0; c < cg; c++) {                                                               \
            const long i = q * cg + c, j = q * S + c;                                                 \
            ACC d = k + alpha * w[j], s, sd;                                                          \
            POWS(ACC, d, s, sd, beta, is075);                                                         \
            sc[j] = s;                                                                                \
            tt[pad + j] = LOAD(g + i) * NAME##_lx(x + i, relu) * sd; /* pad slots stay zero */        \
        }                                                                                             \
    for (long j = 0; j < n; j++) w[j] = 0;                                                            \
    for (int m = -after; m <= before; m++)                                                            \
        for (long j = 0; j < n; j++) w[j] += tt[pad + j + m];                                         \
    for (long q = 0; q < G; q++)                                                                      \
        for (long c = 0; c < cg; c++) {                                                               \
            const long i = q * cg + c, j = q * S + c;                                                 \
            STORE(r + i, NAME##_gate(x + i, relu, LOAD(g + i) * sc[j] - c2 * NAME##_lx(x + i, relu) * w[j])); \
        }                                                                                             \
}                                                                                                     \
/* Tasks t0..t1 of (outer x ceil(inner / BLK)); G groups (towers) only for channels_last (inner = 1). \
 * Returns 1 if scratch memory ran out, 2 for groups the layout does not allow. */                    \
int NAME##_forward(const T *x, T *y, long C, long inner, long t0, long t1, int before, int after,     \
                   double alpha, double beta, double k, int relu, long G) {                           \
    const long nblk = (inner + BLK - 1) / BLK;                                                        \
    const int pad = before > after ? before : after, is075 = beta == 0.75;                            \
    if (G < 1 || C % G || (G > 1 && inner != 1)) return 2; /* groups: channels_last only */         \
    const long rows = C + (G + 1) * pad + pad; /* the widest layout: channels_last with G groups */  \
    ACC *sq = calloc((size_t)(2 * rows) * BLK, sizeof(ACC)); /* zero pads stay zero */               \
    if (!sq) return 1;                                                                                \
    ACC *w = sq + rows * BLK;                                                                         \
    for (long t = t0; t < t1; t++) {                                                                  \
        const long o = t / nblk, i0 = (t % nblk) * BLK, nb = inner - i0 < BLK ? inner - i0 : BLK;    \
        const T *xo = x + o * C * inner + i0;                                                         \
        T *yo = y + o * C * inner + i0;                                                               \
        if (inner == 1 && is075) NAME##_fwd_cl(xo, yo, C, G, before, after, pad, alpha, beta, k, 1, relu, sq, w); \
        else if (inner == 1) NAME##_fwd_cl(xo, yo, C, G, before, after, pad, alpha, beta, k, 0, relu, sq, w);  \
        else if (is075) NAME##_fwd_nchw(xo, yo, C, inner, nb, before, after, pad, alpha, beta, k, 1, relu, sq, w); \
        else NAME##_fwd_nchw(xo, yo, C, inner, nb, before, after, pad, alpha, beta, k, 0, relu, sq, w);  \
    }                                                                                                 \
    free(sq);                                                                                         \
    return 0;                                                                                         \
}                                                                                                     \
int NAME##_backward(const T *x, const T *g, T *gx, long C, long inner, long t0, long t1, int before,  \
                    int after, double alpha, double beta, double k, int relu, long G) {               \
    const long nblk = (inner + BLK - 1) / BLK;                                                        \
    const int pad = before > after ? before : after, is075 = beta == 0.75;                            \
    const ACC c2 = (ACC)(2.0 * alpha * beta);                                                         \
    if (G < 1 || C % G || (G > 1 && inner != 1)) return 2; /* groups: channels_last only */         \
    const long rows = C + (G + 1) * pad + pad;                                                        \
    ACC *sq = calloc((size_t)(4 * rows) * BLK, sizeof(ACC)); /* zero pads stay zero */               \
    if (!sq) return 1;                                                                                \
    ACC *w = sq + rows * BLK, *tt = w + rows * BLK, *sc = tt + rows * BLK;                            \
    for (long t = t0; t < t1; t++) {                                                                  \
        const long o = t / nblk, i0 = (t % nblk) * BLK, nb = inner - i0 < BLK ? inner - i0 : BLK;    \
        const long off = o * C * inner + i0;                                                          \
        if (inner == 1 && is075)                                                                      \
            NAME##_bwd_cl(x + off, g + off, gx + off, C, G, before, after, pad, alpha, beta, k, c2, 1, relu, sq, w, tt, sc); \
        else if (inner == 1)                                                                          \
            NAME##_bwd_cl(x + off, g + off, gx + off, C, G, before, after, pad, alpha, beta, k, c2, 0, relu, sq, w, tt, sc); \
        else {                                                                                        \
            /* tt rows outside the channels must be zero for this block's width */                    \
            for (long p = 0; p < pad * nb; p++) tt[p] = tt[(pad + C) * nb + p] = 0;                   \
            if (is075)                                                                                \
                NAME##_bwd_nchw(x + off, g + off, gx + off, C, inner, nb, before, after, pad, alpha, beta, k, c2, 1, relu, sq, w, tt, sc); \
            else                                                                                      \
                NAME##_bwd_nchw(x + off, g + off, gx + off, C, inner, nb, before, after, pad, alpha, beta, k, c2, 0, relu, sq, w, tt, sc); \
        }                                                                                             \
    }                                                                                                 \
    free(sq);                                                                                         \
    return 0;                                                                                         \
}

#define LD(p) (*(p))
#define ST(p, v) (*(p) = (v))
#define LDB(p) bf16_load(p)
#define STB(p, v) bf16_store((p), (v))

#define SQRT sqrtf
#define POW powf
DEFINE_LRN(lrn_f32, float, float, LD, ST)
DEFINE_LRN(lrn_bf16, uint16_t, float, LDB, STB)
#undef SQRT
#undef POW
#define SQRT sqrt
#define POW pow
DEFINE_LRN(lrn_f64, double, double, LD, ST)

