/* Each lcm-verify subcommand: argv[0] is the subcommand name. Returns an exit status. */
#ifndef LCM_VERIFY_SUBCOMMANDS_H
#define LCM_VERIFY_SUBCOMMANDS_H
int lv_bake(int argc, char **argv);
int lv_lora(int argc, char **argv);
int lv_compare(int argc, char **argv);
int lv_sweep(int argc, char **argv);
int lv_unet(int argc, char **argv);
int lv_schedule(int argc, char **argv);
int lv_sample(int argc, char **argv);
int lv_tokenize(int argc, char **argv);
int lv_text_encode(int argc, char **argv);
int lv_vae_decode(int argc, char **argv);
int lv_render(int argc, char **argv);
#endif
