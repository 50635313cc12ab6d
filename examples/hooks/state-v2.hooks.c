// SPDX-License-Identifier: GPL-2.0
/* Declares that this patch changes system state 42, the version-2 way. */
#include <kstack/hooks.h>

KSTACK_STATE(42, 2);
