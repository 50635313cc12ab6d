// SPDX-License-Identifier: GPL-2.0
/*
 * The post object of a fix that brings data of its own: a new static counter (bss), a
 * new static table (data), a print-once flag as WARN_ONCE and printk_once define it
 * (include/linux/once_lite.h), a new global used from another file of the patch, and
 * a call to a new global function that another file of the patch defines.
 */
extern int printk(const char *fmt, ...);
extern int helper_from_other_file(int x);

static int counter;
static int table[4] = { 1, 2, 3, 5 };
int new_global_total;

int patched(int x)
{
	static _Bool __attribute__((__section__(".data.once"))) __already_done;

	if (!__already_done) {
		__already_done = 1;
		printk("first call\n");
	}
	counter += x;
	new_global_total += table[x & 3];
	return counter + helper_from_other_file(x);
}
