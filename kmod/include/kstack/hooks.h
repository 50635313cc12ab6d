/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kstack/hooks.h: what a patch's hook file may use.
 *
 * Most fixes change code only. When a fix also changes what live data means or
 * needs (a new field, a counter, a lock, a one-time conversion), the patch carries
 * a hook file: C code compiled into the patch's livepatch module, beside the new
 * functions. kstack picks it up as `<patch>.hooks.c` next to `<patch>.diff` (or
 * `kstack commit --hooks FILE`), and stores it with the patch.
 *
 * HOOKS. Each runs around the patch's transition (the kernel's livepatch
 * callbacks, Documentation/livepatch/callbacks.rst), in this order:
 *
 *   apply:   KSTACK_PRE_APPLY   before any task runs the new code. Returning
 *                               non-zero refuses the patch: the module's init
 *                               fails with that error, nothing was patched, and
 *                               `kstack sync` reports a failed step and rolls the
 *                               host back to its previous generation. Explain why
 *                               with kstack_refuse(), which kstack shows.
 *            ... transition: tasks switch to the new code one by one ...
 *            KSTACK_POST_APPLY  after every task runs the new code.
 *
 *   revert:  KSTACK_PRE_REVERT  before the transition back starts (every task
 *                               still runs the new code).
 *            ... transition back ...
 *            KSTACK_POST_REVERT after every task runs the old code again: the
 *                               place to free what the new code used.
 *
 * A transition that is reversed while in flight (kstack reverses one that does
 * not finish within [sync] transition_timeout) runs no further hooks of that
 * direction: after a reversed apply, KSTACK_POST_REVERT runs (not POST_APPLY),
 * so whatever PRE_APPLY set up is torn down by POST_REVERT in both cases.
 * A refused PRE_APPLY runs nothing else.
 *
 * CUMULATIVE MODULES. In replace mode ([sync] mode = "replace", the default) a
 * generation is one module holding every patch of the stack, loaded over whatever
 * runs in a single transition; the kernel runs none of the replaced modules'
 * callbacks. kstack keeps each patch's hooks meaning what they mean above,
 * patch by patch (docs/replace-mode.md):
 *
 *   - a patch new in the generation runs PRE_APPLY before the transition and
 *     POST_APPLY after it;
 *   - a patch the generation drops runs PRE_REVERT before the transition and
 *     POST_REVERT after it (its code runs from its old module, which kstack
 *     unloads only afterwards);
 *   - a patch in both runs nothing: its shadow variables and whatever else its
 *     PRE_APPLY set up carry over to the new module untouched.
 *
 * Leaving patches run their hooks first (newest first), then new ones (in stack
 * order). A refusing PRE_APPLY takes back what ran before it (POST_REVERT of the
 * new patches, POST_APPLY of the leaving ones) and the host stays on its
 * generation; a reversed transition does the same.
 *
 * Hooks run in process context with no livepatch locks held that matter to
 * them; they may sleep and allocate. Hook code is compiled into a normal module:
 * it may use exported kernel symbols only (the new functions of the patch may
 * use any symbol: kstack reaches unexported ones through livepatch relocations).
 *
 * SHADOW VARIABLES attach a new field to live objects without changing their
 * layout (Documentation/livepatch/shadow-vars.rst): an (object, id) pair maps to
 * a small zeroed allocation. Use one id per field, from KSTACK_SHADOW_ID().
 *
 * STATES. KSTACK_STATE(id, version) declares that this patch modifies system
 * state `id` in a way of `version`. The kernel refuses to load a patch whose
 * version of a state is lower than an already applied patch's
 * (Documentation/livepatch/system-state.rst): an incompatible later patch is
 * refused by the kernel, and kstack reports it as a failed step. A cumulative
 * module declares every state its patches declare (the highest version); the
 * kernel refuses one that drops a patch whose state no other patch declares (a
 * cumulative patch must handle every state already modified), so such a patch
 * is reverted in stack mode.
 *
 * Reserved: shadow variable id 0x6b73746b00000001 (kstack's registry of loaded
 * patch modules).
 */
#ifndef KSTACK_HOOKS_H
#define KSTACK_HOOKS_H

#include <linux/gfp.h>
#include <linux/livepatch.h>
#include <linux/printk.h>

/*
 * The callback the template wires for each hook (weak: absent means none). A
 * module holds one or more patches; kstack compiles each one's hook file with
 * KSTACK_MEMBER_INDEX set to its place in the module, which names its hooks apart.
 */
#ifdef KSTACK_MEMBER_INDEX
#define __KSTACK_HOOK_NAME2(kind, index) __kstack_hook_##kind##_##index
#define __KSTACK_HOOK_NAME1(kind, index) __KSTACK_HOOK_NAME2(kind, index)
#define __KSTACK_HOOK_NAME(kind) __KSTACK_HOOK_NAME1(kind, KSTACK_MEMBER_INDEX)
#else
#define __KSTACK_HOOK_NAME(kind) __kstack_hook_##kind
#endif

#define KSTACK_PRE_APPLY(fn)						\
	int __KSTACK_HOOK_NAME(pre_apply)(struct klp_object *obj) { return fn(); }
#define KSTACK_POST_APPLY(fn)						\
	void __KSTACK_HOOK_NAME(post_apply)(struct klp_object *obj) { fn(); }
#define KSTACK_PRE_REVERT(fn)						\
	void __KSTACK_HOOK_NAME(pre_revert)(struct klp_object *obj) { fn(); }
#define KSTACK_POST_REVERT(fn)						\
	void __KSTACK_HOOK_NAME(post_revert)(struct klp_object *obj) { fn(); }

/*
 * Declares a system state this patch modifies. kstack reads these lines from the
 * hook file when it builds the patch (one per state, literal numbers).
 */
#define KSTACK_STATE(id, version)					\
	static const int __kstack_state_##id __attribute__((unused)) = (version)

/* A shadow variable id: 16 bits of namespace, 16 of field. */
#define KSTACK_SHADOW_ID(ns, field) ((unsigned long)(((ns) << 16) | (field)))

/*
 * The reason a PRE_APPLY hook refuses. The message goes to the kernel log with
 * the module's name, where kstack finds it and shows it with the failed step.
 */
#define kstack_refuse(fmt, ...)						\
	pr_err("%s: refused: " fmt "\n", KBUILD_MODNAME, ##__VA_ARGS__)

/* Attaches a zeroed field of `size` bytes to `obj`; NULL on allocation failure. */
static inline void *kstack_shadow_attach(void *obj, unsigned long id,
					 size_t size, gfp_t gfp)
{
	return klp_shadow_alloc(obj, id, size, gfp, NULL, NULL);
}

/* The field, attaching it first if the object has none yet. */
static inline void *kstack_shadow_get_or_attach(void *obj, unsigned long id,
						size_t size, gfp_t gfp)
{
	return klp_shadow_get_or_alloc(obj, id, size, gfp, NULL, NULL);
}

/* The field of `obj`, or NULL. */
static inline void *kstack_shadow_get(void *obj, unsigned long id)
{
	return klp_shadow_get(obj, id);
}

/* Frees one object's field. */
static inline void kstack_shadow_free(void *obj, unsigned long id)
{
	klp_shadow_free(obj, id, NULL);
}

/* Frees the field of every object: the usual POST_REVERT. */
static inline void kstack_shadow_free_all(unsigned long id)
{
	klp_shadow_free_all(id, NULL);
}

#endif /* KSTACK_HOOKS_H */
