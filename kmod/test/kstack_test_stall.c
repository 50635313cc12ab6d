// SPDX-License-Identifier: GPL-2.0
/*
 * A livepatch whose transition cannot finish while kstack_parker is loaded: it
 * replaces kstack_parker_wait(), in which that module's kernel thread sleeps.
 */
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>

static int kstack_test_stall_wait(void)
{
	return 0;
}

static struct klp_func kstack_test_stall_funcs[] = {
	{
		.old_name = "kstack_parker_wait",
		.new_func = kstack_test_stall_wait,
	},
	{}
};

static struct klp_object kstack_test_stall_objs[] = {
	{
		.name = "kstack_parker",
		.funcs = kstack_test_stall_funcs,
	},
	{}
};

static struct klp_patch kstack_test_stall_patch = {
	.mod = THIS_MODULE,
	.objs = kstack_test_stall_objs,
};

static int __init kstack_test_stall_init(void)
{
	return klp_enable_patch(&kstack_test_stall_patch);
}

static void __exit kstack_test_stall_exit(void)
{
}

module_init(kstack_test_stall_init);
module_exit(kstack_test_stall_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kstack test: a livepatch whose transition stalls");
MODULE_INFO(livepatch, "Y");
