/* cflags: -fpatchable-function-entry=16,16 */
#include "kernel.h"

/*
 * 6.12, a unit objtool processed (a one-file module): each function has 16 no-ops
 * before it (CONFIG_CALL_PADDING) and objtool's `__pfx_` symbol on them
 * (CONFIG_PREFIX_SYMBOLS, tools/objtool/check.c add_prefix_symbol), written here
 * as objtool would: a local function symbol of 16 bytes right before the function.
 */
#define PREFIX_SYMBOL(fn)                                                      \
	asm(".pushsection .text." #fn ",\"ax\",@progbits\n"                     \
	    ".type __pfx_" #fn ", @function\n"                                 \
	    ".set __pfx_" #fn ", " #fn " - 16\n"                               \
	    ".size __pfx_" #fn ", 16\n"                                        \
	    ".popsection\n")

int compute(int x)
{
	return helper_a(x) + 1;
}
PREFIX_SYMBOL(compute);
