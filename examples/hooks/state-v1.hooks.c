// SPDX-License-Identifier: GPL-2.0
/*
 * Declares system state 42 at version 1. On top of state-v2 the kernel refuses
 * this patch: a livepatch must not lower the version of a state an applied one
 * set (kernel/livepatch/state.c).
 */
#include <kstack/hooks.h>

KSTACK_STATE(42, 1);
