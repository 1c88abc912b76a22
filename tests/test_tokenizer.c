/* CLIP tokenizer against fixtures/golden/clip/tokenizer_goldens.json (40
 * prompts, ids from transformers' CLIPTokenizer with ftfy: exact match). */
#include <cjson/cJSON.h>
#include <stdint.h>

#include "libmerge/tokenizer.h"
#include "test.h"

static lm_tokenizer *g_tok;
static cJSON *g_json;

static void test_tokenizer_open(void)
{
    lm_err e;
    CHECK_OK(lm_tokenizer_open(&g_tok, FIXTURE("golden/clip/bpe_simple_vocab_16e6.txt.gz"), &e), &e);
    CHECK_EQ_STR(lm_tokenizer_token(g_tok, 0), "!");
    CHECK_EQ_STR(lm_tokenizer_token(g_tok, 256), "!</w>");
    CHECK_EQ_STR(lm_tokenizer_token(g_tok, 2368), "cat</w>");
    CHECK_EQ_STR(lm_tokenizer_token(g_tok, 49407), "<|endoftext|>");
    CHECK(lm_tokenizer_token(g_tok, 49408) == NULL);
}

static void test_tokenizer_cat(void)
{
    lm_err e;
    int32_t ids[77];
    size_t n = 0;
    CHECK(g_tok);
    CHECK_OK(lm_tokenizer_encode(g_tok, "a photo of a cat", LM_CLIP_PAD_SD15, ids, &n, &e), &e);
    static const int32_t want[7] = { 49406, 320, 1125, 539, 320, 2368, 49407 };
    for (int i = 0; i < 7; i++) CHECK_EQ_INT(ids[i], want[i]);
    for (int i = 7; i < 77; i++) CHECK_EQ_INT(ids[i], 49407);
    CHECK_EQ_INT(n, 5);
    CHECK_OK(lm_tokenizer_encode(g_tok, "a photo of a cat", LM_CLIP_PAD_ZERO, ids, &n, &e), &e);
    CHECK_EQ_INT(ids[6], 49407);
    CHECK_EQ_INT(ids[7], 0);
}

/* Every golden case, all 77 ids exactly; names the first case that differs. */
static void test_tokenizer_goldens(void)
{
    CHECK(g_tok);
    char *text = t_slurp(FIXTURE("golden/clip/tokenizer_goldens.json"), NULL);
    CHECK(text);
    g_json = cJSON_Parse(text);
    free(text);
    CHECK(g_json);
    cJSON *cases = cJSON_GetObjectItem(g_json, "cases");
    int n = cJSON_GetArraySize(cases), bad = 0;
    CHECK_EQ_INT(n, 40);
    char first[200] = "";
    for (int c = 0; c < n; c++) {
        cJSON *cs = cJSON_GetArrayItem(cases, c);
        const char *prompt = cJSON_GetObjectItem(cs, "prompt")->valuestring;
        cJSON *want = cJSON_GetObjectItem(cs, "input_ids");
        int32_t ids[77];
        size_t nc = 0;
        lm_err e;
        if (lm_tokenizer_encode(g_tok, prompt, LM_CLIP_PAD_SD15, ids, &nc, &e)) { bad++; continue; }
        int ok = (int)nc == cJSON_GetObjectItem(cs, "num_content_tokens")->valueint;
        for (int i = 0; i < 77; i++)
            if (ids[i] != cJSON_GetArrayItem(want, i)->valueint) ok = 0;
        if (!ok) {
            if (!bad) snprintf(first, sizeof first, "%s", cJSON_GetObjectItem(cs, "id")->valuestring);
            bad++;
        }
    }
    CHECK_MSG(bad == 0, "%d of %d cases differ, first: %s", bad, n, first);
}

static void test_tokenizer_normalize(void)
{
    lm_err e;
    char *s = NULL;
    /* decomposed accents -> NFC, ligature, full-width, curly quote, entity, mojibake */
    const char in[] = "Cafe\xcc\x81  \xef\xac\x81ne \xef\xbc\xa1 \xe2\x80\x99x &amp;amp; caf\xc3\x83\xc2\xa9";
    CHECK_OK(lm_tokenizer_normalize(in, sizeof in - 1, &s, &e), &e);
    CHECK_EQ_STR(s, "caf\xc3\xa9 fine a 'x & caf\xc3\xa9");
    free(s);
    CHECK(lm_tokenizer_normalize("a\xc3(", 3, &s, &e) == LM_EINPUT);
    CHECK_EQ_INT(e.offset, 1);
}

static void test_tokenizer_bad_vocab(void)
{
    lm_tokenizer *t = NULL;
    lm_err e;
    CHECK(lm_tokenizer_open(&t, FIXTURE("golden/clip/README.md"), &e) == LM_EINPUT);
    CHECK(t == NULL);
    CHECK(lm_tokenizer_open(&t, "/nonexistent/vocab.gz", &e) == LM_EIO);
}

int main(void)
{
    RUN(test_tokenizer_open);
    RUN(test_tokenizer_cat);
    RUN(test_tokenizer_goldens);
    RUN(test_tokenizer_normalize);
    RUN(test_tokenizer_bad_vocab);
    cJSON_Delete(g_json);
    lm_tokenizer_free(g_tok);
    TEST_EXIT();
}
