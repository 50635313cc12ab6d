// SPDX-License-Identifier: GPL-2.0
/*
 * A livepatch module whose init always fails, as a patch would whose
 * klp_enable_patch() is refused: the reconciler must report the kernel's answer
 * and leave the host on its previous generation.
 */
#include <linux/kernel.h>
#include <linux/module.h>

static int __init kstack_test_fail_init(void)
{
	pr_err("kstack_test_fail: refusing to load: this test module always fails its init\n");
	return -ENODEV;
}

static void __exit kstack_test_fail_exit(void)
{
}

module_init(kstack_test_fail_init);
module_exit(kstack_test_fail_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kstack test: a livepatch module whose init fails");
MODULE_INFO(livepatch, "Y");
