/* cflags: -fpatchable-function-entry=16,16 */
#include "kernel.h"

/* As in the pre file: objtool's prefix symbols, written as objtool would. */
#define PREFIX_SYMBOL(fn)                                                      \
	asm(".pushsection .text." #fn ",\"ax\",@progbits\n"                     \
	    ".type __pfx_" #fn ", @function\n"                                 \
	    ".set __pfx_" #fn ", " #fn " - 16\n"                               \
	    ".size __pfx_" #fn ", 16\n"                                        \
	    ".popsection\n")

static noinline int clamp(int x)
{
	return x > 100 ? 100 : x;
}
PREFIX_SYMBOL(clamp);

int compute(int x)
{
	return clamp(helper_a(x)) + 1;
}
PREFIX_SYMBOL(compute);
