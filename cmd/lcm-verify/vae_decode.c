/* lcm-verify vae-decode MODEL --input IN -o OUT: VAE decoder, latent →
 * image (safetensors F32, or PNG post-processed as the pipeline does). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "libmerge/cli.h"
#include "libmerge/png.h"
#include "libmerge/vae.h"
#include "libmerge/writer.h"
#include "plumbing.h"
#include "subcommands.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: lcm-verify vae-decode MODEL --input IN -o OUT [--tile N] [--no-scale]\n"
               "                  [--latent-name NAME]\n"
               "  IN: latent [N,4,h,w] F32 as the sampler produces it (divided by 0.18215 here;\n"
               "      --no-scale decodes it as is); --latent-name reads another tensor name\n"
               "  OUT: .safetensors: image [N,3,8h,8w] F32, unclamped;\n"
               "       .png: round(clamp(image/2+0.5)*255) (N > 1: the images side by side)\n"
               "  --tile N: exact banded decoding, bands of N latent rows, 1..4096 (memory bounded by the\n"
               "      band, activations in temporary files in $TMPDIR); default: automatic above\n"
               "      64x64 latents; -1: never\n");
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcasecmp(s + a - b, suf);
}

int lv_vae_decode(int argc, char **argv)
{
    static const struct option opts[] = {
        { "input", required_argument, 0, 'i' }, { "output", required_argument, 0, 'o' },
        { "tile", required_argument, 0, 't' },
        { "no-scale", no_argument, 0, 'S' }, { "latent-name", required_argument, 0, 'N' },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    const char *prog = "lcm-verify vae-decode", *in = NULL, *outp = NULL, *lname = "latent";
    lm_vae_decode_opts vo = LM_VAE_DECODE_OPTS_INIT;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "i:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'i': in = optarg; break;
        case 'o': outp = optarg; break;
        case 't': if (lv_parse_band(prog, "--tile", optarg, &vo.tile)) return LM_EXIT_USAGE; break;
        case 'S': vo.scaled = 0; break;
        case 'N': lname = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return LM_EXIT_USAGE;
        }
    }
    if (!in || !outp || optind != argc - 1) { usage(stderr); return LM_EXIT_USAGE; }
    const char *model = argv[optind];
    const int png = ends_with(outp, ".png");
    lm_atomic_install_signal_handlers();
    lm_err err;
    lm_err_clear(&err);
    lm_source *is = NULL, *ms = NULL;
    lm_vae *v = NULL;
    lv_tensor lat = { 0 }, img = { 0 };
    uint8_t *rgb = NULL, *grid = NULL;
    const char *ins[2] = { model, in };
    int rc = lv_check_output(outp, ins, 2, NULL, 0, &err);
    if (!rc) rc = lm_source_open(&is, in, NULL, &err);
    if (!rc) rc = lv_read(is, lname, 1, 4, 4, &lat, &err);
    if (!rc) rc = lm_source_open(&ms, model, NULL, &err);
    if (!rc) rc = lm_vae_load_source(&v, ms, &err);
    const lm_vae_config *cfg = v ? lm_vae_config_of(v) : NULL;
    int64_t N = lat.shape[0], h = lat.shape[2], w = lat.shape[3], f = cfg ? 1 << (cfg->levels - 1) : 8;
    if (!rc && lat.shape[1] != cfg->latent_channels)
        rc = lm_err_set(&err, LM_EINPUT, in, lname, LM_ERR_NO_OFFSET, "%lld channels, the VAE takes %d",
                        (long long)lat.shape[1], cfg->latent_channels);
    if (!rc && (N < 1 || h < 1 || w < 1 || h > 4096 || w > 4096))
        rc = lm_err_set(&err, LM_EINPUT, in, lname, LM_ERR_NO_OFFSET, "latent [%lld, %lld, %lld, %lld] out of range (N >= 1, h and w 1..4096)", (long long)N,
                        (long long)lat.shape[1], (long long)h, (long long)w);
    const size_t HW = (size_t)(h * f * w * f);
    if (!rc) {
        img = (lv_tensor){ "image", 4, { N, 3, h * f, w * f }, malloc((size_t)N * 3 * HW * sizeof(float)) };
        if (png) rgb = malloc((size_t)N * 3 * HW);
        if (!img.data || (png && !rgb)) rc = lm_err_set(&err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    }
    for (int64_t n = 0; n < N && !rc; n++) {
        rc = lm_vae_decode(v, lat.data + n * cfg->latent_channels * h * w, (int)h, (int)w, &vo,
                           img.data + n * 3 * HW, &err);
        if (!rc && png) lm_vae_image_to_u8(img.data + n * 3 * HW, (int)(h * f), (int)(w * f), rgb + n * 3 * HW);
    }
    const char *inputs[2] = { model, in };
    if (!rc && !png) rc = lv_write(outp, &img, 1, inputs, 2, "vae-decode", &err);
    if (!rc && png) {
        if (N == 1) {
            rc = lm_png_write(outp, rgb, (int)(w * f), (int)(h * f), NULL, 0, &err);
        } else {
            const uint8_t **cells = malloc((size_t)N * sizeof *cells);
            int gw = 0, gh = 0;
            if (!cells) rc = lm_err_set(&err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
            for (int64_t n = 0; !rc && n < N; n++) cells[n] = rgb + n * 3 * HW;
            if (!rc) rc = lm_png_grid(cells, 1, (int)N, (int)(w * f), (int)(h * f), NULL, NULL, &grid, &gw, &gh, &err);
            if (!rc) rc = lm_png_write(outp, grid, gw, gh, NULL, 0, &err);
            free(cells);
        }
    }
    free(lat.data);
    free(img.data);
    free(rgb);
    free(grid);
    lm_vae_free(v);
    lm_source_close(ms);
    lm_source_close(is);
    return rc ? lm_cli_fail(prog, &err) : 0;
}
