/* Exact banded VAE decoding (lm_vae_decode with opts.tile >= 0 or a large
 * latent; see include/libmerge/vae.h).
 *
 * The front (post_quant_conv, conv_in, mid block with its attention over
 * every position) runs in memory at latent resolution. Every later layer
 * runs as sweeps over bands of whole rows: a sweep reads its input band by
 * band with the one-row halo a 3×3 convolution needs, computes, and writes
 * its output band by band to an unlinked temporary file, accumulating each
 * channel's Σx and Σx² of what it writes, so the next GroupNorm's global
 * mean and variance are known before the next sweep normalises anything.
 * A resnet is two sweeps: (a) GN1 + SiLU → conv1 → h; (b) GN2 + SiLU →
 * conv2 → + shortcut(x) → out, written over x in place (band [Y0, Y1) of
 * out overwrites rows [Y0, Y1) of x's first cout channels, which no later
 * band reads: the shortcut needs no halo). An upsampler is one sweep (output
 * rows [Y0, Y1) at 2× read input rows ⌊(Y0−1)/2⌋ … ⌊Y1/2⌋), the last one
 * (norm_out + SiLU + conv_out) writes the caller's image. So two files are
 * live at a time: x/out and h (or an upsampler's input and output).
 *
 * Convolutions of a band: the band buffer holds image rows [r0, r0+R); a
 * conv pads its top/bottom edge with zeros only where the band edge is the
 * image edge (im2col: pad {r0 == 0, 1, r0+R == H, 1}); Winograd always
 * pads, so it computes R rows and the first and last (wrong at an inner
 * band edge) are dropped. The same convolution as the whole image's, up to
 * float rounding (Winograd tiles start at other rows). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libmerge/ops.h"
#include "libmerge/vae.h"
#include "sampler/vae_impl.h"

/* automatic bands (tile 0): floats of band buffers per sweep, estimated
 * from the channel counts (128 MiB; ~52 rows of a 1024 px image at its
 * widest level, where Winograd's two dropped rows cost ~4%), unless the
 * caller gives another budget */
#define BAND_BUDGET ((size_t)32 << 20)

enum { B_IN, B_OUT, B_X, B_TMP, B_N };

/* one full activation [C, H, W] fp32 in temporary file `file` */
typedef struct {
    int file;
    int C, H, W;
    double *sum, *sq;             /* Σx, Σx² per channel of what was written */
} act;

typedef struct {
    const lm_vae *v;
    const lm_vae_config *c;
    int h, tile;
    size_t budget;                /* tile 0: floats of band buffers per sweep */
    const char *dir;              /* where the temporary files are (named in errors) */
    int fd[2];
    float *b[B_N];
    size_t cap[B_N];
    double *mean, *rstd;          /* [groups] of the GroupNorm being applied */
    lm_work work;
    lm_err *err;
} band;

static int oom(band *B)
{
    return lm_err_set(B->err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET,
                      "out of memory decoding a %d-row latent in bands", B->h);
}

static int io_fail(band *B, const char *what, int e)
{
    return lm_err_set(B->err, LM_EIO, B->dir, NULL, LM_ERR_NO_OFFSET, "%s the VAE decoder's temporary activations: %s",
                      what, e == ENOSPC ? "disk full" : strerror(e));
}

/* An unlinked temporary file in B->dir (O_TMPFILE: never has a name; else
 * mkstemp and unlink at once), with `bytes` reserved so that a full disk
 * shows before the work starts. */
static int tmp_open(band *B, int k, int64_t bytes)
{
    int fd = -1;
#ifdef O_TMPFILE
    fd = open(B->dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
#endif
    if (fd < 0) {
        char path[4096];
        if (snprintf(path, sizeof path, "%s/libmerge-vae-XXXXXX", B->dir) >= (int)sizeof path)
            return io_fail(B, "creating a file for", ENAMETOOLONG);
        fd = mkostemp(path, O_CLOEXEC);
        if (fd < 0) return io_fail(B, "creating a file for", errno);
        unlink(path);
    }
    B->fd[k] = fd;
    /* fallocate, not posix_fallocate: no emulation by writing zeros where
     * the file system cannot reserve */
    if (bytes > 0 && fallocate(fd, 0, 0, (off_t)bytes) && errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL)
        return io_fail(B, "reserving space for", errno);
    return 0;
}

static int io_rw(band *B, int wr, int k, void *p, size_t n, int64_t off)
{
    char *q = p;
    size_t left = n * sizeof(float);
    off_t o = (off_t)off * (off_t)sizeof(float);
    while (left) {
        ssize_t r = wr ? pwrite(B->fd[k], q, left, o) : pread(B->fd[k], q, left, o);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return io_fail(B, wr ? "writing" : "reading", r < 0 ? errno : EIO);
        q += r;
        left -= (size_t)r;
        o += r;
    }
    return 0;
}

/* rows [y0, y1) of every channel of a → p [a->C, y1 − y0, W] */
static int rows_read(band *B, const act *a, int y0, int y1, float *p)
{
    size_t n = (size_t)(y1 - y0) * a->W;
    for (int ch = 0; ch < a->C; ch++) {
        int rc = io_rw(B, 0, a->file, p + ch * n, n, ((int64_t)ch * a->H + y0) * a->W);
        if (rc) return rc;
    }
    return 0;
}

/* rows [y0, y1) of the a->C channels, channel ch at p + ch·ld, → a's file,
 * their Σx, Σx² added to a's */
static int rows_write(band *B, act *a, int y0, int y1, float *p, int64_t ld)
{
    size_t n = (size_t)(y1 - y0) * a->W;
    lm_group_norm_stats(p, a->C, (int64_t)n, ld, a->sum, a->sq);
    for (int ch = 0; ch < a->C; ch++) {
        int rc = io_rw(B, 1, a->file, p + ch * ld, n, ((int64_t)ch * a->H + y0) * a->W);
        if (rc) return rc;
    }
    return 0;
}

static void act_reset(act *a, int C, int H, int W)
{
    a->C = C;
    a->H = H;
    a->W = W;
    memset(a->sum, 0, (size_t)C * sizeof *a->sum);
    memset(a->sq, 0, (size_t)C * sizeof *a->sq);
}

/* band buffer i with room for n floats (contents not kept when it grows) */
static float *buf(band *B, int i, size_t n)
{
    if (n > B->cap[i]) {
        free(B->b[i]);
        B->b[i] = malloc(n * sizeof(float));
        B->cap[i] = B->b[i] ? n : 0;
    }
    return B->b[i];
}

/* output rows of a band at a level of H rows: tile·(H/h), or (tile 0) what
 * the budget allows at per_row floats of buffers per output row, evened out */
static int band_rows(const band *B, int H, size_t per_row)
{
    if (B->tile > 0) {
        int64_t r = (int64_t)B->tile * (H / B->h);
        return r > H ? H : (int)r;
    }
    int64_t r = (int64_t)(B->budget / (per_row ? per_row : 1)), n;
    if (r < 2) r = 2;
    n = (H + r - 1) / r;          /* bands of equal height: no thin last band */
    return (int)((H + n - 1) / n);
}

static void moments(band *B, const act *a)
{
    lm_group_norm_moments(a->sum, a->sq, a->C, B->c->groups, (int64_t)a->H * a->W, B->c->eps, B->mean, B->rstd);
}

/* 3×3 convolution of a band: x holds rows [r0, r0+R) of a [C, H, W] input;
 * y gets at least output rows [r0+1, r0+R−1) (clipped to the image);
 * *o points at output row Y0 of channel 0 and *ld is the channel stride. */
static int conv_band(band *B, int wino, const float *x, int C, int r0, int R, int H, int W, const float *w,
                     const float *b, int OC, int Y0, float *y, float **o, int64_t *ld)
{
    if (wino) {
        if (lm_conv3x3_winograd(x, C, R, W, w, b, OC, y, &B->work)) return oom(B);
        *o = y + (size_t)(Y0 - r0) * W;
        *ld = (int64_t)R * W;
        return 0;
    }
    const int pad[4] = { r0 == 0, 1, r0 + R == H, 1 };
    if (lm_conv2d(x, C, R, W, w, b, OC, 3, 1, pad, y, &B->work)) return oom(B);
    *o = y + (size_t)(Y0 - (r0 + 1 - pad[0])) * W;
    *ld = (int64_t)(R + pad[0] + pad[2] - 2) * W;
    return 0;
}

/* GN(x) + SiLU with x's global statistics, then a 3×3 conv, for output
 * rows [Y0, Y1): reads x rows [Y0−1, Y1+1) ∩ [0, H) into B_IN, result in
 * B_OUT at *o (channel stride *ld). */
static int norm_conv_band(band *B, const act *x, const float *gw, const float *gb, int wino, const float *w,
                          const float *b, int OC, int Y0, int Y1, float **o, int64_t *ld)
{
    const int H = x->H, W = x->W, r0 = Y0 > 0 ? Y0 - 1 : 0, r1 = Y1 < H ? Y1 + 1 : H, R = r1 - r0;
    float *in = buf(B, B_IN, (size_t)x->C * R * W), *out = buf(B, B_OUT, (size_t)OC * R * W);
    if (!in || !out) return oom(B);
    int rc = rows_read(B, x, r0, r1, in);
    if (rc) return rc;
    lm_group_norm_apply(in, x->C, (int64_t)R * W, B->c->groups, B->mean, B->rstd, gw, gb, 1, in);
    return conv_band(B, wino, in, x->C, r0, R, H, W, w, b, OC, Y0, out, o, ld);
}

/* resnet sweep (a): hs = conv1(SiLU(GN1(x))) */
static int resnet_a(band *B, const vae_resnet *r, const act *x, act *hs)
{
    const int H = x->H, W = x->W;
    act_reset(hs, r->cout, H, W);
    moments(B, x);
    int rows = band_rows(B, H, (size_t)(2 * r->cin + 3 * r->cout) * W);
    for (int Y0 = 0; Y0 < H; Y0 += rows) {
        int Y1 = Y0 + rows < H ? Y0 + rows : H, rc;
        float *o = NULL;
        int64_t ld = 0;
        if ((rc = norm_conv_band(B, x, r->n1w, r->n1b, r->wino1, r->c1w, r->c1b, r->cout, Y0, Y1, &o, &ld)) ||
            (rc = rows_write(B, hs, Y0, Y1, o, ld)))
            return rc;
    }
    return 0;
}

/* resnet sweep (b): x ← conv2(SiLU(GN2(hs))) + shortcut(x), in place */
static int resnet_b(band *B, const vae_resnet *r, act *x, const act *hs)
{
    const int H = x->H, W = x->W;
    const act xin = *x;                    /* x as it is read: cin channels */
    act_reset(x, r->cout, H, W);           /* x as it is written: out's statistics */
    moments(B, hs);
    static const int pad0[4] = { 0, 0, 0, 0 };
    int rows = band_rows(B, H, (size_t)(2 * r->cin + 3 * r->cout) * W);
    for (int Y0 = 0; Y0 < H; Y0 += rows) {
        int Y1 = Y0 + rows < H ? Y0 + rows : H, rc;
        size_t n = (size_t)(Y1 - Y0) * W;
        float *o = NULL, *xs = buf(B, B_X, (size_t)r->cin * n), *sc = r->scw ? buf(B, B_TMP, (size_t)r->cout * n) : NULL;
        int64_t ld = 0;
        if (!xs || (r->scw && !sc)) return oom(B);
        if ((rc = norm_conv_band(B, hs, r->n2w, r->n2b, r->wino2, r->c2w, r->c2b, r->cout, Y0, Y1, &o, &ld)) ||
            (rc = rows_read(B, &xin, Y0, Y1, xs)))
            return rc;
        if (sc && lm_conv2d(xs, r->cin, Y1 - Y0, W, r->scw, r->scb, r->cout, 1, 1, pad0, sc, &B->work)) return oom(B);
        for (int ch = 0; ch < r->cout; ch++) lm_add(o + ch * ld, (sc ? sc : xs) + ch * n, n);
        if ((rc = rows_write(B, x, Y0, Y1, o, ld))) return rc;
    }
    return 0;
}

/* upsampler of up block i: y = conv(nearest2x(x)) */
static int upsample(band *B, int i, const act *x, act *y)
{
    const lm_vae *v = B->v;
    const int C = x->C, h = x->H, w = x->W, H = 2 * h, W = 2 * w;
    act_reset(y, C, H, W);
    int rows = band_rows(B, H, (size_t)3 * C * W);
    for (int Y0 = 0; Y0 < H; Y0 += rows) {
        int Y1 = Y0 + rows < H ? Y0 + rows : H, rc;
        /* output rows [Y0, Y1) see upsampled rows [Y0−1, Y1], source rows ⌊(Y0−1)/2⌋ … ⌊Y1/2⌋ */
        int a0 = Y0 > 0 ? (Y0 - 1) / 2 : 0, a1 = Y1 / 2 + 1 < h ? Y1 / 2 + 1 : h, n2 = 2 * (a1 - a0);
        float *in = buf(B, B_IN, (size_t)C * (a1 - a0) * w), *out = buf(B, B_OUT, (size_t)C * n2 * W), *o = NULL;
        int64_t ld = 0;
        if (!in || !out) return oom(B);
        if ((rc = rows_read(B, x, a0, a1, in))) return rc;
        if (v->ups_wino[i]) {   /* padding at the band's inner edges only touches the dropped rows */
            if (lm_conv3x3_winograd_up2(in, C, a1 - a0, w, v->ups_w[i], v->ups_b[i], C, out, &B->work)) return oom(B);
            o = out + (size_t)(Y0 - 2 * a0) * W;
            ld = (int64_t)n2 * W;
        } else {
            float *up = buf(B, B_TMP, (size_t)C * n2 * W);
            if (!up) return oom(B);
            lm_upsample_nearest2x(in, C, a1 - a0, w, up);
            if ((rc = conv_band(B, 0, up, C, 2 * a0, n2, H, W, v->ups_w[i], v->ups_b[i], C, Y0, out, &o, &ld))) return rc;
        }
        if ((rc = rows_write(B, y, Y0, Y1, o, ld))) return rc;
    }
    return 0;
}

/* norm_out + SiLU + conv_out → img [3, H, W] */
static int finish(band *B, const act *x, float *img)
{
    const lm_vae *v = B->v;
    const int H = x->H, W = x->W;
    moments(B, x);
    int rows = band_rows(B, H, (size_t)(2 * x->C + 6) * W);
    for (int Y0 = 0; Y0 < H; Y0 += rows) {
        int Y1 = Y0 + rows < H ? Y0 + rows : H, rc;
        float *o = NULL;
        int64_t ld = 0;
        if ((rc = norm_conv_band(B, x, v->no_w, v->no_b, 0, v->out_w, v->out_b, 3, Y0, Y1, &o, &ld))) return rc;
        for (int ch = 0; ch < 3; ch++)
            memcpy(img + ((size_t)ch * H + Y0) * W, o + ch * ld, (size_t)(Y1 - Y0) * W * sizeof *img);
    }
    return 0;
}

/* bytes each of the two files holds at most, following the sweeps */
static void file_sizes(const lm_vae_config *c, int h, int w, int64_t need[2])
{
    const int L = c->levels;
    int64_t hw = (int64_t)h * w;
    int p = 0, cin = c->ch[L - 1];
    need[0] = cin * hw;
    need[1] = 0;
    for (int i = 0; i < L; i++) {
        int cout = c->ch[L - 1 - i];
        if (cout * hw > need[1 - p]) need[1 - p] = cout * hw;          /* h of each resnet */
        if (i < L - 1) {
            hw *= 4;
            if (cout * hw > need[1 - p]) need[1 - p] = cout * hw;      /* upsampler output */
            p = 1 - p;
        }
        cin = cout;
    }
    need[0] *= (int64_t)sizeof(float);
    need[1] *= (int64_t)sizeof(float);
}

int lm_vae_decode_banded(const lm_vae *v, const float *z, int h, int w, int tile, size_t budget, float *img,
                         lm_err *err)
{
    const lm_vae_config *c = &v->cfg;
    const int L = c->levels, top = c->ch[L - 1];
    band B = { v, c, h, tile, budget ? budget : BAND_BUDGET, NULL, { -1, -1 }, { NULL }, { 0 }, NULL, NULL,
               LM_WORK_INIT, err };
    const char *dir = getenv("TMPDIR");
    B.dir = dir && *dir ? dir : "/tmp";
    int cmax = top;
    for (int i = 0; i < L; i++) cmax = c->ch[i] > cmax ? c->ch[i] : cmax;
    double *d = calloc((size_t)4 * cmax + 2 * (size_t)c->groups, sizeof *d);
    act X = { 0, 0, 0, 0, NULL, NULL }, T = { 1, 0, 0, 0, NULL, NULL };
    size_t fn = (size_t)(c->latent_channels > top ? c->latent_channels : top) * h * w;
    vae_fwd f = { malloc(fn * sizeof(float)), malloc(fn * sizeof(float)), malloc(fn * sizeof(float)), LM_WORK_INIT };
    int rc = 0;
    if (!d || !f.X || !f.T || !f.Y) { rc = oom(&B); goto done; }
    X.sum = d;
    X.sq = d + cmax;
    T.sum = d + 2 * cmax;
    T.sq = d + 3 * cmax;
    B.mean = d + 4 * cmax;
    B.rstd = B.mean + c->groups;
    int64_t need[2];
    file_sizes(c, h, w, need);
    if ((rc = tmp_open(&B, 0, need[0])) || (rc = tmp_open(&B, 1, need[1]))) goto done;
    if (lm_vae_front(v, z, h, w, &f)) { rc = oom(&B); goto done; }
    act_reset(&X, top, h, w);
    if ((rc = rows_write(&B, &X, 0, h, f.X, (int64_t)h * w))) goto done;
    free(f.X); free(f.T); free(f.Y);
    f.X = f.T = f.Y = NULL;
    lm_work_free(&f.work);
    for (int i = 0; i < L && !rc; i++) {
        for (int j = 0; j < c->resnets && !rc; j++) {
            const vae_resnet *r = &v->up[i * c->resnets + j];
            if (!(rc = resnet_a(&B, r, &X, &T))) rc = resnet_b(&B, r, &X, &T);
        }
        if (!rc && i < L - 1 && !(rc = upsample(&B, i, &X, &T))) {
            act t = X;
            X = T;
            T = t;
        }
    }
    if (!rc) rc = finish(&B, &X, img);
done:
    for (int k = 0; k < 2; k++)
        if (B.fd[k] >= 0) close(B.fd[k]);
    for (int k = 0; k < B_N; k++) free(B.b[k]);
    free(f.X); free(f.T); free(f.Y);
    lm_work_free(&f.work);
    lm_work_free(&B.work);
    free(d);
    return rc;
}
