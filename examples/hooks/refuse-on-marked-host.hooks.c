// SPDX-License-Identifier: GPL-2.0
/*
 * Hooks of refuse-on-marked-host.diff: a patch that must not be applied on some
 * systems. Its pre-apply hook refuses on a host named "kstack-refuse"; kstack
 * then reports the failed step with this message and keeps the host on its
 * previous generation.
 */
#include <linux/errno.h>
#include <linux/string.h>
#include <linux/utsname.h>
#include <kstack/hooks.h>

static int refuse_on_marked_host(void)
{
	const char *host = init_utsname()->nodename;

	if (!strcmp(host, "kstack-refuse")) {
		kstack_refuse("host %s is marked kstack-refuse", host);
		return -EPERM;
	}
	return 0;
}

KSTACK_PRE_APPLY(refuse_on_marked_host);
