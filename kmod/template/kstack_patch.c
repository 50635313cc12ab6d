// SPDX-License-Identifier: GPL-2.0
/*
 * The livepatch module that kstack builds around the new versions of a patch's
 * functions. kstack generates kstack_patch_table.h (the function table and the
 * patch's metadata) and links this file with the object that holds the new
 * functions (extracted from the post-patch build) and, when the patch has one,
 * the hook file.
 *
 * The table comes as X-macros so this file stays plain C that a reader can
 * check: KSTACK_OBJECT(index, name, hooks) for each object the patch changes (name
 * NULL for vmlinux, else the module's name: the kernel patches a module whenever it
 * loads; hooks KSTACK_HOOKS for the first object, KSTACK_NO_HOOKS for the others),
 * and KSTACK_FUNC(old_name, new_symbol, old_sympos) in KSTACK_FUNCS_<index> for
 * each function of that object it replaces.
 */

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>

#include "kstack_patch_table.h"

/*
 * The new functions live in the extracted objects; only their addresses are
 * needed here, so a neutral prototype serves for all of them.
 */
#define KSTACK_FUNC(old, new, pos) extern void new(void);
KSTACK_ALL_FUNCS
#undef KSTACK_FUNC

#define KSTACK_FUNC(old, new, pos) \
	{ .old_name = old, .new_func = new, .old_sympos = pos },
#define KSTACK_OBJECT(index, objname, hooks) \
	static struct klp_func kstack_funcs_##index[] = { KSTACK_FUNCS_##index {} };
KSTACK_OBJECTS
#undef KSTACK_OBJECT
#undef KSTACK_FUNC

/*
 * The patch's hooks, if its hook file defines them (kstack/hooks.h); weak, so a
 * patch without hooks links with NULL callbacks.
 */
extern int __kstack_hook_pre_apply(struct klp_object *obj) __weak;
extern void __kstack_hook_post_apply(struct klp_object *obj) __weak;
extern void __kstack_hook_pre_revert(struct klp_object *obj) __weak;
extern void __kstack_hook_post_revert(struct klp_object *obj) __weak;

/*
 * The hooks run around the transition of the first object: vmlinux when the patch
 * changes it, else its first module (when that module is patched).
 */
#define KSTACK_HOOKS \
	.callbacks = { \
		.pre_patch = __kstack_hook_pre_apply, \
		.post_patch = __kstack_hook_post_apply, \
		.pre_unpatch = __kstack_hook_pre_revert, \
		.post_unpatch = __kstack_hook_post_revert, \
	}
#define KSTACK_NO_HOOKS

static struct klp_object kstack_objs[] = {
#define KSTACK_OBJECT(index, objname, hooks) \
	{ .name = objname, .funcs = kstack_funcs_##index, hooks },
	KSTACK_OBJECTS
#undef KSTACK_OBJECT
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
