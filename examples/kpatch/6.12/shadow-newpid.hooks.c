// SPDX-License-Identifier: GPL-2.0
/*
 * Hooks of shadow-newpid.diff: once the patch is reverted, no code reads or frees
 * the per-task notes any more, so they are all freed at once.
 */
#include <kstack/hooks.h>

/* The id kernel_clone, do_exit and task_context_switch_counts use. */
#define KSTACK_CLONE_NOTE_ID 0x6b730002UL

static void clone_notes_post_revert(void)
{
	kstack_shadow_free_all(KSTACK_CLONE_NOTE_ID);
}

KSTACK_POST_REVERT(clone_notes_post_revert);
