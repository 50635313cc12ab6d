// SPDX-License-Identifier: GPL-2.0
/*
 * kstack's first livepatch module, written by hand: it replaces
 * cmdline_proc_show() (fs/proc/cmdline.c), so that reading /proc/cmdline shows
 * a marker line instead of the kernel command line. Disabling the patch through
 * /sys/kernel/livepatch/kstack_demo/enabled brings the original back.
 *
 * The sandbox demo (`cargo xtask demo`) and the first end-to-end test load it
 * into the Debian cloud kernel booted in QEMU.
 */

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

#define KSTACK_DEMO_MARKER "kstack-demo: this /proc/cmdline comes from a live patch"

/* The new version of cmdline_proc_show(); same prototype as the original. */
static int kstack_demo_cmdline_show(struct seq_file *m, void *v)
{
	seq_puts(m, KSTACK_DEMO_MARKER "\n");
	return 0;
}

static struct klp_func kstack_demo_funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = kstack_demo_cmdline_show,
	},
	{}
};

static struct klp_object kstack_demo_objs[] = {
	{
		/* .name == NULL: the function lives in vmlinux. */
		.funcs = kstack_demo_funcs,
	},
	{}
};

static struct klp_patch kstack_demo_patch = {
	.mod = THIS_MODULE,
	.objs = kstack_demo_objs,
};

static int __init kstack_demo_init(void)
{
	return klp_enable_patch(&kstack_demo_patch);
}

static void __exit kstack_demo_exit(void)
{
}

module_init(kstack_demo_init);
module_exit(kstack_demo_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("kstack");
MODULE_DESCRIPTION("kstack demo: live-patch /proc/cmdline");
MODULE_INFO(livepatch, "Y");
