// SPDX-License-Identifier: GPL-2.0
/* Test patch C: replaces loadavg_proc_show, so /proc/loadavg prints "kstack-test-c". */
#define KSTACK_TEST_TARGET loadavg_proc_show
#define KSTACK_TEST_MARKER "kstack-test-c"
#include "proc_patch.h"
