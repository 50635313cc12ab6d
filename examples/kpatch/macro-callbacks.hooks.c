// SPDX-License-Identifier: GPL-2.0
/*
 * Hooks of macro-callbacks.diff: each logs its name, so the kernel log shows the
 * order in which they ran. While the patch is applied, the last one that ran is
 * post_apply; once it is reverted, post_revert.
 */
#include <kstack/hooks.h>

static int callbacks_pre_apply(void)
{
	pr_info("kstack-callbacks: pre_apply\n");
	return 0;
}

static void callbacks_post_apply(void)
{
	pr_info("kstack-callbacks: post_apply\n");
}

static void callbacks_pre_revert(void)
{
	pr_info("kstack-callbacks: pre_revert\n");
}

static void callbacks_post_revert(void)
{
	pr_info("kstack-callbacks: post_revert\n");
}

KSTACK_PRE_APPLY(callbacks_pre_apply);
KSTACK_POST_APPLY(callbacks_post_apply);
KSTACK_PRE_REVERT(callbacks_pre_revert);
KSTACK_POST_REVERT(callbacks_post_revert);
