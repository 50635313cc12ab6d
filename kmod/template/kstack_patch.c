// SPDX-License-Identifier: GPL-2.0
/*
 * The livepatch module that kstack builds around the new versions of a patch's
 * functions. kstack generates kstack_patch_table.h (the function table and the
 * patch's metadata) and links this file with the object that holds the new
 * functions (extracted from the post-patch build) and, when the patch has one,
 * the hook file.
 *
 * The table comes as X-macros so this file stays plain C that a reader can
 * check: KSTACK_FUNC(old_name, new_symbol, old_sympos) for each replaced
 * function of vmlinux.
 */

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>

#include "kstack_patch_table.h"

/*
 * The new functions live in the extracted object; only their addresses are
 * needed here, so a neutral prototype serves for all of them.
 */
#define KSTACK_FUNC(old, new, pos) extern void new(void);
KSTACK_VMLINUX_FUNCS
#undef KSTACK_FUNC

static struct klp_func kstack_vmlinux_funcs[] = {
#define KSTACK_FUNC(old, new, pos) \
	{ .old_name = old, .new_func = new, .old_sympos = pos },
	KSTACK_VMLINUX_FUNCS
#undef KSTACK_FUNC
	{}
};

/*
 * The patch's hooks, if its hook file defines them (kstack/hooks.h); weak, so a
 * patch without hooks links with NULL callbacks.
 */
extern int __kstack_hook_pre_apply(struct klp_object *obj) __weak;
extern void __kstack_hook_post_apply(struct klp_object *obj) __weak;
extern void __kstack_hook_pre_revert(struct klp_object *obj) __weak;
extern void __kstack_hook_post_revert(struct klp_object *obj) __weak;

static struct klp_object kstack_objs[] = {
	{
		/* .name == NULL: vmlinux */
		.funcs = kstack_vmlinux_funcs,
		.callbacks = {
			.pre_patch = __kstack_hook_pre_apply,
			.post_patch = __kstack_hook_post_apply,
			.pre_unpatch = __kstack_hook_pre_revert,
			.post_unpatch = __kstack_hook_post_revert,
		},
	},
	{}
};

#ifdef KSTACK_STATES
static struct klp_state kstack_states[] = { KSTACK_STATES, {} };
#endif

static struct klp_patch kstack_patch = {
	.mod = THIS_MODULE,
	.objs = kstack_objs,
#ifdef KSTACK_STATES
	.states = kstack_states,
#endif
};

static int __init kstack_patch_init(void)
{
	return klp_enable_patch(&kstack_patch);
}

static void __exit kstack_patch_exit(void)
{
}

module_init(kstack_patch_init);
module_exit(kstack_patch_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION(KSTACK_PATCH_DESCRIPTION);
MODULE_INFO(livepatch, "Y");
MODULE_INFO(kstack_patch, KSTACK_PATCH_NAME);
