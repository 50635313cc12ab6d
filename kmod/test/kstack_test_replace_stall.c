// SPDX-License-Identifier: GPL-2.0
/*
 * A cumulative livepatch (replace = true) whose transition cannot finish while
 * kstack_parker is loaded: it replaces kstack_parker_wait(), in which that
 * module's kernel thread sleeps, and prints a marker from /proc/cmdline.
 */
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int kstack_test_replace_stall_wait(void)
{
	return 0;
}

static int kstack_test_replace_stall_show(struct seq_file *m, void *v)
{
	seq_puts(m, "kstack-test-replace-stall\n");
	return 0;
}

static struct klp_func kstack_test_replace_stall_vmlinux[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = kstack_test_replace_stall_show,
	},
	{}
};

static struct klp_func kstack_test_replace_stall_parker[] = {
	{
		.old_name = "kstack_parker_wait",
		.new_func = kstack_test_replace_stall_wait,
	},
	{}
};

static struct klp_object kstack_test_replace_stall_objs[] = {
	{ .funcs = kstack_test_replace_stall_vmlinux },
	{
		.name = "kstack_parker",
		.funcs = kstack_test_replace_stall_parker,
	},
	{}
};

static struct klp_patch kstack_test_replace_stall_patch = {
	.mod = THIS_MODULE,
	.objs = kstack_test_replace_stall_objs,
	.replace = true,
};

static int __init kstack_test_replace_stall_init(void)
{
	return klp_enable_patch(&kstack_test_replace_stall_patch);
}

static void __exit kstack_test_replace_stall_exit(void)
{
}

module_init(kstack_test_replace_stall_init);
module_exit(kstack_test_replace_stall_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kstack test: a cumulative livepatch whose transition stalls");
MODULE_INFO(livepatch, "Y");
