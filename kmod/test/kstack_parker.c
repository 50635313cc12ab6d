// SPDX-License-Identifier: GPL-2.0
/*
 * Not a livepatch: a test module that starts a kernel thread and parks it
 * inside kstack_parker_wait() until the module is unloaded. A livepatch that
 * replaces kstack_parker_wait() (kstack_test_stall.c) cannot finish its
 * transition while the thread sleeps there: the function is on its stack, so
 * the consistency model never switches it. That is how the tests make a
 * transition stall on purpose.
 */
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/wait.h>

static DECLARE_WAIT_QUEUE_HEAD(kstack_parker_wq);
static bool kstack_parker_released;
static struct task_struct *kstack_parker_task;

/* The function the stalling patch replaces; noinline so it has its own frame. */
noinline int kstack_parker_wait(void)
{
	/*
	 * The livepatch core wakes sleeping kernel threads to let them switch;
	 * this one goes straight back to sleep here.
	 */
	wait_event_interruptible(kstack_parker_wq,
				 READ_ONCE(kstack_parker_released) || kthread_should_stop());
	return 0;
}

static int kstack_parker_thread(void *data)
{
	while (!kthread_should_stop())
		kstack_parker_wait();
	return 0;
}

static int __init kstack_parker_init(void)
{
	kstack_parker_task = kthread_run(kstack_parker_thread, NULL, "kstack-parked");
	if (IS_ERR(kstack_parker_task))
		return PTR_ERR(kstack_parker_task);
	pr_info("kstack_parker: thread %d parked in kstack_parker_wait()\n",
		task_pid_nr(kstack_parker_task));
	return 0;
}

static void __exit kstack_parker_exit(void)
{
	WRITE_ONCE(kstack_parker_released, true);
	wake_up_all(&kstack_parker_wq);
	kthread_stop(kstack_parker_task);
}

module_init(kstack_parker_init);
module_exit(kstack_parker_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kstack test: a kernel thread parked in a function to be patched");
