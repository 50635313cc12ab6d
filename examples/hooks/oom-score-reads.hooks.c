// SPDX-License-Identifier: GPL-2.0
/*
 * Hooks of oom-score-reads.diff: the per-task read counter lives in a shadow
 * variable. Before the patch is applied, every existing task gets its counter
 * (tasks created later get one on first read, in the patched function); after
 * the patch is reverted, every counter is freed, so nothing is left behind.
 */
#include <linux/rcupdate.h>
#include <linux/sched/signal.h>
#include <kstack/hooks.h>

/* The id the patched proc_oom_score() uses. */
#define OOM_READS_ID 0x6b730001UL

static int oom_reads_pre_apply(void)
{
	struct task_struct *g, *t;
	unsigned long attached = 0, stale = 0;

	rcu_read_lock();
	for_each_process_thread(g, t) {
		/* Counters left by an earlier application would mean a leak. */
		if (kstack_shadow_get(t, OOM_READS_ID))
			stale++;
		else if (kstack_shadow_attach(t, OOM_READS_ID,
					      sizeof(unsigned long), GFP_ATOMIC))
			attached++;
	}
	rcu_read_unlock();
	pr_info("%s: oom-reads: %lu tasks initialised, %lu stale counters\n",
		KBUILD_MODNAME, attached, stale);
	return 0;
}

static void oom_reads_post_revert(void)
{
	kstack_shadow_free_all(OOM_READS_ID);
	pr_info("%s: oom-reads: counters freed\n", KBUILD_MODNAME);
}

KSTACK_PRE_APPLY(oom_reads_pre_apply);
KSTACK_POST_REVERT(oom_reads_post_revert);
