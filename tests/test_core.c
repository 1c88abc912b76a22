/* Error formatting, exit statuses, λ parsing, scalar dtype conversions. */
#include "test.h"
#include "libmerge/err.h"
#include "libmerge/cli.h"
#include "libmerge/dtype.h"

#include <stdint.h>

static void err_format_names_file_key_offset(void)
{
    lm_err e;
    char buf[1400];
    lm_err_clear(&e);
    lm_err_set(&e, LM_EINPUT, "m.safetensors", "w.weight", 42, "unknown dtype %s", "Q4");
    CHECK_EQ_STR(lm_err_format(&e, buf, sizeof buf), "m.safetensors: w.weight: at byte 42: unknown dtype Q4");
    lm_err_set(&e, LM_EIO, "x", NULL, LM_ERR_NO_OFFSET, "disk full");
    CHECK_EQ_STR(lm_err_format(&e, buf, sizeof buf), "x: disk full");
    lm_err_key(&e, "k");
    lm_err_file(&e, "other");
    CHECK_EQ_STR(lm_err_format(&e, buf, sizeof buf), "x: k: disk full");
}

static void exit_statuses_are_distinct(void)
{
    CHECK_EQ_INT(lm_exit_status(LM_OK), 0);
    CHECK_EQ_INT(lm_exit_status(LM_EVERIFY), 1);
    CHECK_EQ_INT(lm_exit_status(LM_EUSAGE), 2);
    CHECK_EQ_INT(lm_exit_status(LM_EINPUT), 3);
    CHECK_EQ_INT(lm_exit_status(LM_EMISMATCH), 3);
    CHECK_EQ_INT(lm_exit_status(LM_EIO), 4);
    CHECK_EQ_INT(lm_exit_status(LM_ENOMEM), 5);
    CHECK_EQ_INT(lm_exit_status(LM_EINTR), 130);
}

static void weighted_spec_parsing(void)
{
    char p[64];
    double l;
    CHECK_OK(lm_parse_weighted("a.safetensors:0.8", p, sizeof p, &l), NULL);
    CHECK_EQ_STR(p, "a.safetensors");
    CHECK_NEAR(l, 0.8, 0);
    CHECK_OK(lm_parse_weighted("dir:x/a.safetensors", p, sizeof p, &l), NULL);
    CHECK_EQ_STR(p, "dir:x/a.safetensors");
    CHECK_NEAR(l, 1.0, 0);
    CHECK_OK(lm_parse_weighted("b:-1", p, sizeof p, &l), NULL);
    CHECK_EQ_STR(p, "b");
    CHECK_NEAR(l, -1.0, 0);
    CHECK(lm_parse_weighted(":0.5", p, sizeof p, &l) == LM_EUSAGE);
    CHECK(lm_parse_weighted("a:nan", p, sizeof p, &l) == LM_EUSAGE);
    CHECK(lm_parse_weighted("a:inf", p, sizeof p, &l) == LM_EUSAGE);
    CHECK(lm_parse_weighted("a:1e999", p, sizeof p, &l) == LM_EUSAGE);
    CHECK(lm_parse_weighted("a:1e39", p, sizeof p, &l) == LM_EUSAGE);
    CHECK(lm_parse_weighted("a:1.2.3", p, sizeof p, &l) == LM_EUSAGE);
    CHECK(lm_parse_weighted("a:", p, sizeof p, &l) == LM_EUSAGE);
    CHECK_OK(lm_parse_weighted("a:0x10", p, sizeof p, &l), NULL); /* not decimal: part of the path */
    CHECK_EQ_STR(p, "a:0x10");
    CHECK_OK(lm_parse_weighted("a:-0", p, sizeof p, &l), NULL);
    CHECK_NEAR(l, 0.0, 0);
    CHECK_OK(lm_parse_weighted("a:1e3", p, sizeof p, &l), NULL);
    CHECK_NEAR(l, 1000.0, 0);
}

static void cli_dtype_and_int_parsing(void)
{
    lm_dtype dt = LM_DT_F64;
    CHECK_OK(lm_cli_parse_dtype("keep", &dt), NULL);
    CHECK_EQ_INT(dt, LM_DT_INVALID);
    CHECK_OK(lm_cli_parse_dtype("fp16", &dt), NULL);
    CHECK_EQ_INT(dt, LM_DT_F16);
    CHECK_OK(lm_cli_parse_dtype("BF16", &dt), NULL);
    CHECK_EQ_INT(dt, LM_DT_BF16);
    CHECK_OK(lm_cli_parse_dtype("f32", &dt), NULL);
    CHECK_EQ_INT(dt, LM_DT_F32);
    CHECK(lm_cli_parse_dtype("fp8", &dt) == LM_EUSAGE);
    CHECK(lm_cli_parse_dtype("", &dt) == LM_EUSAGE);
    long v = -7;
    CHECK_OK(lm_cli_parse_int("64", 0, 64, &v), NULL);
    CHECK_EQ_INT(v, 64);
    CHECK(lm_cli_parse_int("", 0, 64, &v) == LM_EUSAGE);   /* was read as 0 */
    CHECK(lm_cli_parse_int("65", 0, 64, &v) == LM_EUSAGE);
    CHECK(lm_cli_parse_int(" 3", 0, 64, &v) == LM_EUSAGE);
    CHECK(lm_cli_parse_int("3x", 0, 64, &v) == LM_EUSAGE);
    CHECK(lm_cli_parse_int("99999999999999999999", 0, 64, &v) == LM_EUSAGE);
}

static void f16_known_values(void)
{
    CHECK_EQ_INT(lm_f32_to_f16(1.0f), 0x3c00);
    CHECK_EQ_INT(lm_f32_to_f16(65504.0f), 0x7bff);
    CHECK_EQ_INT(lm_f32_to_f16(65519.99f), 0x7bff);   /* rounds down to max */
    CHECK_EQ_INT(lm_f32_to_f16(65520.0f), 0x7c00);    /* ties to even: Inf */
    CHECK_EQ_INT(lm_f32_to_f16(70000.0f), 0x7c00);
    CHECK_EQ_INT(lm_f32_to_f16(-2.0f), 0xc000);
    CHECK_EQ_INT(lm_f32_to_f16(5.9604645e-8f), 0x0001); /* smallest subnormal */
    CHECK_EQ_INT(lm_f32_to_f16(2.9802322e-8f), 0x0000); /* half of it: tie to even (0) */
    CHECK_EQ_INT(lm_f32_to_f16(1.0f + 1.0f / 2048.0f), 0x3c00); /* tie: even mantissa */
    CHECK_EQ_INT(lm_f32_to_f16(1.0f + 3.0f / 2048.0f), 0x3c02); /* tie: round up to even */
    CHECK(isnan(lm_f16_to_f32(lm_f32_to_f16(NAN))));
    CHECK_NEAR(lm_f16_to_f32(0x0001), ldexp(1.0, -24), 0);
    CHECK_NEAR(lm_f16_to_f32(0x3555), 1365.0 / 4096.0, 0);
}

static void f16_roundtrip_all_65536(void)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = lm_f16_to_f32((uint16_t)h);
        if (isnan(f)) { CHECK(((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff)); continue; }
        CHECK_MSG(lm_f32_to_f16(f) == h, "0x%04x -> %g -> 0x%04x", h, f, lm_f32_to_f16(f));
    }
}

static void bf16_rounding(void)
{
    CHECK_EQ_INT(lm_f32_to_bf16(1.0f), 0x3f80);
    CHECK_NEAR(lm_bf16_to_f32(0x3f80), 1.0, 0);
    /* 1 + 2^-8 is a tie between 1 and 1+2^-7: even is 1 */
    CHECK_EQ_INT(lm_f32_to_bf16(1.0f + 1.0f / 256.0f), 0x3f80);
    CHECK_EQ_INT(lm_f32_to_bf16(1.0f + 3.0f / 256.0f), 0x3f82);
    float big = 3.4e38f;
    CHECK_EQ_INT(lm_f32_to_bf16(big), 0x7f80); /* rounds past max bf16: Inf */
    float src[2] = { big, 1.0f };
    uint16_t out[2];
    CHECK_EQ_INT(lm_convert_from_f32(out, LM_DT_BF16, src, 2), 1);
}

static void f16_overflow_counted(void)
{
    float src[4] = { 70000.0f, -70000.0f, INFINITY, 1.0f };
    uint16_t out[4];
    CHECK_EQ_INT(lm_convert_from_f32(out, LM_DT_F16, src, 4), 2); /* Inf in is not an overflow */
    CHECK_EQ_INT(out[0], 0x7c00);
    CHECK_EQ_INT(out[1], 0xfc00);
}

static void f8_known_values(void)
{
    uint8_t b[4];
    float src[4] = { 448.0f, 1.0f, -0.015625f, 500.0f };
    CHECK_EQ_INT(lm_convert_from_f32(b, LM_DT_F8_E4M3, src, 4), 1);
    CHECK_EQ_INT(b[0], 0x7e);
    CHECK_EQ_INT(b[1], 0x38);
    CHECK_EQ_INT(b[2], 0x88); /* -2^-6: smallest normal, exponent field 1 */
    CHECK_EQ_INT(b[3], 0x7f); /* NaN */
    float back[4];
    CHECK_OK(lm_convert_to_f32(back, b, LM_DT_F8_E4M3, 4), NULL);
    CHECK_NEAR(back[0], 448.0, 0);
    CHECK_NEAR(back[2], -0.015625, 0);
    float s2[2] = { 57344.0f, 1.5f };
    CHECK_EQ_INT(lm_convert_from_f32(b, LM_DT_F8_E5M2, s2, 2), 0);
    CHECK_EQ_INT(b[0], 0x7b);
    CHECK_EQ_INT(b[1], 0x3e);
}

int main(void)
{
    RUN(err_format_names_file_key_offset);
    RUN(exit_statuses_are_distinct);
    RUN(weighted_spec_parsing);
    RUN(cli_dtype_and_int_parsing);
    RUN(f16_known_values);
    RUN(f16_roundtrip_all_65536);
    RUN(bf16_rounding);
    RUN(f16_overflow_counted);
    RUN(f8_known_values);
    TEST_EXIT();
}
