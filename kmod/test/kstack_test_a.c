// SPDX-License-Identifier: GPL-2.0
/* Test patch A: replaces cmdline_proc_show, so /proc/cmdline prints "kstack-test-a". */
#define KSTACK_TEST_TARGET cmdline_proc_show
#define KSTACK_TEST_MARKER "kstack-test-a"
#include "proc_patch.h"
