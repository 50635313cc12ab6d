// SPDX-License-Identifier: GPL-2.0
/* Test patch B: replaces version_proc_show, so /proc/version prints "kstack-test-b". */
#define KSTACK_TEST_TARGET version_proc_show
#define KSTACK_TEST_MARKER "kstack-test-b"
#include "proc_patch.h"
