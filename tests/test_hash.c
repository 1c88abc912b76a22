/* Hashes against values computed independently (sha256sum / Python hashlib
 * over the fixture files, and kohya's own sshs_model_hash stored in the
 * LyCORIS file's metadata). */
#include "test.h"
#include "libmerge/hash.h"
#include "libmerge/source.h"

#include <unistd.h>
#include <xxhash.h>

typedef struct hcase {
    const char *file;
    const char *sha256, *autov1, *addnet;   /* addnet NULL: not safetensors */
} hcase;

/* sha256sum FILE; python3: hashlib.sha256(b[0x100000:0x110000]).hexdigest()[:8];
 * hashlib.sha256(b[8 + n:]).hexdigest() with n = the u64 at the start. */
static const hcase k_cases[] = {
    { "sd15_lora_attnproc_noprefix.safetensors", "fb286c8e569d6a07401bd5599d3d1a64126c0b240d2d1d00174602a967e59c9b",
      "68f5c450", "ddd48cd74131db7f5b1e97d383a8d7669a87fcaac35d114042eea1420b683277" },
    { "sd15_lora_diffusers_bf16.safetensors", "2aecf92c3ac37d80aa4fac5f1d8bc90e74207e69f4b8369715f169c3d810c224",
      "7b847640", "389cd82af557e86b2a4eb1bf91e01e1076500e11216357569fb03cb14c18309a" },
    { "sd15_lycoris_lokr_fp16.safetensors", "86c94ad35cf53921f26c7888f018324753813189f5baf504aff03f31c5bbf734",
      "e3b0c442", "150ef207aad02214f69756f53c3fc56efacdf6c79e32dd76e5fcbcf6c6a5350f" },
    { "st_i64_scalar_offset_order.safetensors", "bcbb7500e8c322202fe1c1d51e167c6166510056ad25125628f8deec56c032f2",
      "e3b0c442", "711ecfc8c22cafc1562ddbad86756ba4dcb15d06c110bc5a610821e845dd826e" },
    { "ddpm_unet_flat_state_dict.pth", "9050a27a4afb13bf39ed7c27db2734f63b1858f58010d63e0d05c01d431cfee5", "1b13d2f9", NULL },
    { "legacy_nested_state_dict.pt", "306c7c318bbb98dc9019b4c954b5e1070805b850847c96f7e1a8af21ae44321e", "e3b0c442", NULL },
};

static void file_hashes_match_independent_values(void)
{
    for (size_t c = 0; c < sizeof k_cases / sizeof *k_cases; c++) {
        const hcase *h = &k_cases[c];
        char path[512];
        snprintf(path, sizeof path, "fixtures/real/%s", h->file);
        lm_file_hashes fh;
        lm_err err;
        CHECK_OK(lm_hash_file(path, LM_HASH_ALL, &fh, &err), &err);
        CHECK_EQ_STR(fh.sha256, h->sha256);
        CHECK(strncmp(fh.autov2, h->sha256, 10) == 0 && strlen(fh.autov2) == 10);
        CHECK_EQ_STR(fh.autov1, h->autov1);
        if (h->addnet) {
            CHECK(fh.have == LM_HASH_ALL);
            CHECK_EQ_STR(fh.addnet, h->addnet);
            CHECK(strncmp(fh.addnet_short, h->addnet, 12) == 0 && strlen(fh.addnet_short) == 12);
            CHECK(fh.modelspec[0] == '0' && fh.modelspec[1] == 'x');
            CHECK_EQ_STR(fh.modelspec + 2, h->addnet);
        } else {
            CHECK(fh.have == (LM_HASH_SHA256 | LM_HASH_AUTOV1));
            CHECK_EQ_STR(fh.addnet, "");
        }
        /* asking for less gives the same values */
        lm_file_hashes only;
        CHECK_OK(lm_hash_file(path, LM_HASH_ADDNET, &only, &err), &err);
        CHECK_EQ_STR(only.sha256, "");
        if (h->addnet) CHECK_EQ_STR(only.addnet, h->addnet);
    }
}

/* kohya wrote sshs_model_hash into the LyCORIS file: our addnet hash equals it. */
static void addnet_equals_kohya_sshs_model_hash(void)
{
    const char *path = "fixtures/real/sd15_lycoris_lokr_fp16.safetensors";
    lm_source *s = NULL;
    lm_err err;
    CHECK_OK(lm_source_open(&s, path, NULL, &err), &err);
    const char *stored = lm_source_meta_get(s, "sshs_model_hash");
    const char *legacy = lm_source_meta_get(s, "sshs_legacy_hash");
    CHECK(stored && legacy);
    lm_file_hashes fh;
    CHECK_OK(lm_hash_file(path, LM_HASH_ALL, &fh, &err), &err);
    CHECK_EQ_STR(fh.addnet, stored);
    CHECK_EQ_STR(fh.autov1, legacy);   /* file under 1 MiB: both hash the empty string */
    lm_source_close(s);
}

static void sha256_and_xxh3_known_vectors(void)
{
    char hex[65];
    lm_sha256_hex("abc", 3, hex);   /* FIPS 180-2 example */
    CHECK_EQ_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    lm_sha256_hex("", 0, hex);
    CHECK_EQ_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(lm_xxh3_64("", 0) == 0x2D06800538D394C2ull);   /* xxHash's documented empty-input value */
}

/* Per-tensor XXH3 equals XXH3 of the bytes the source hands out, differs
 * between different tensors, and is stable across opens. */
static void tensor_xxh3(void)
{
    lm_source *s = NULL;
    lm_err err;
    CHECK_OK(lm_source_open(&s, "fixtures/real/st_i64_scalar_offset_order.safetensors", NULL, &err), &err);
    uint64_t h[9];
    for (size_t i = 0; i < lm_source_count(s); i++) {
        const lm_entry *e = lm_source_entry(s, i);
        unsigned char *b = malloc(e->nbytes);
        CHECK_OK(lm_source_read(s, i, b, &err), &err);
        CHECK_OK(lm_hash_tensor_xxh3(s, i, &h[i], &err), &err);
        CHECK(h[i] == XXH3_64bits(b, e->nbytes));
        free(b);
        for (size_t j = 0; j < i; j++) CHECK(h[i] != h[j]);
    }
    int64_t one = 1;
    CHECK(h[0] == lm_xxh3_64(&one, 8));   /* num_batches_tracked = 1 (I64) */
    CHECK_EQ_INT(lm_hash_tensor_xxh3(s, 99, &h[0], &err), LM_EUSAGE);
    lm_source_close(s);
}

static void errors(void)
{
    lm_file_hashes fh;
    lm_err err;
    CHECK_EQ_INT(lm_hash_file("/nonexistent/file", LM_HASH_ALL, &fh, &err), LM_EIO);
    CHECK_EQ_INT(lm_hash_file("fixtures", LM_HASH_ALL, &fh, &err), LM_EIO);
}

int main(void)
{
    RUN(file_hashes_match_independent_values);
    RUN(addnet_equals_kohya_sshs_model_hash);
    RUN(sha256_and_xxh3_known_vectors);
    RUN(tensor_xxh3);
    RUN(errors);
    TEST_EXIT();
}
