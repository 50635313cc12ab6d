// SPDX-License-Identifier: GPL-2.0
/*
 * A livepatch that kstack did not load (a vendor's, say): replaces
 * uptime_proc_show, so /proc/uptime prints "vendor-fix". kstack must report
 * it and never touch it.
 */
#define KSTACK_TEST_TARGET uptime_proc_show
#define KSTACK_TEST_MARKER "vendor-fix"
#include "proc_patch.h"
