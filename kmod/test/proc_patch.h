/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A test livepatch that replaces one seq_file "show" function of /proc with one
 * that prints a marker line, so a test can see from userspace which patches the
 * kernel is running. Each kstack_test_<x>.c defines KSTACK_TEST_TARGET (the
 * function to replace) and KSTACK_TEST_MARKER, then includes this file; with
 * KSTACK_TEST_REPLACE defined, the patch is cumulative (replace = true).
 */
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

#define KSTACK_STR_(x) #x
#define KSTACK_STR(x) KSTACK_STR_(x)

static int kstack_test_show(struct seq_file *m, void *v)
{
	seq_puts(m, KSTACK_TEST_MARKER "\n");
	return 0;
}

static struct klp_func kstack_test_funcs[] = {
	{
		.old_name = KSTACK_STR(KSTACK_TEST_TARGET),
		.new_func = kstack_test_show,
	},
	{}
};

static struct klp_object kstack_test_objs[] = {
	{ .funcs = kstack_test_funcs }, /* vmlinux */
	{}
};

static struct klp_patch kstack_test_patch = {
	.mod = THIS_MODULE,
	.objs = kstack_test_objs,
#ifdef KSTACK_TEST_REPLACE
	.replace = true,
#endif
};

static int __init kstack_test_init(void)
{
	return klp_enable_patch(&kstack_test_patch);
}

static void __exit kstack_test_exit(void)
{
}

module_init(kstack_test_init);
module_exit(kstack_test_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kstack test livepatch: " KSTACK_TEST_MARKER);
MODULE_INFO(livepatch, "Y");
