// SPDX-License-Identifier: GPL-2.0
/*
 * The livepatch module that kstack builds around the new versions of a patch's
 * functions. kstack generates kstack_patch_table.h (the function table and the
 * patch's metadata) and links this file with the object that holds the new
 * functions (extracted from the post-patch build) and, when the patch has one,
 * the hook file.
 *
 * The table comes as X-macros so this file stays plain C that a reader can
 * check: KSTACK_OBJECT(index, name) for each object the patch changes (name NULL
 * for vmlinux, else the module's name: the kernel patches a module whenever it
 * loads), KSTACK_FUNC(old_name, new_symbol, old_sympos) in KSTACK_FUNCS_<index> for
 * each function of that object it replaces, KSTACK_HOOK_OBJECT (the object whose
 * transition the hooks run around), KSTACK_MODULE_OBJECTS when a module is one,
 * KSTACK_REPLACE (1 for a stack's cumulative module: it replaces every patch the
 * kernel runs, in one transition), and KSTACK_MEMBER(index, id) in KSTACK_MEMBERS for
 * each patch the module holds: one for a patch's own module, every patch of the
 * stack for a cumulative one. A member's hook file is compiled with
 * KSTACK_MEMBER_INDEX set, so its hooks are named __kstack_hook_<kind>_<index>.
 */

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>

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
#define KSTACK_OBJECT(index, objname) \
	static struct klp_func kstack_funcs_##index[] = { KSTACK_FUNCS_##index {} };
KSTACK_OBJECTS
#undef KSTACK_OBJECT
#undef KSTACK_FUNC

#ifdef KSTACK_MODULE_OBJECTS
#include <linux/elf.h>

/*
 * Linux 6.1 leaves a module object's livepatch relocations applied when the module
 * unloads, and then refuses to apply them again when the module loads again (x86
 * apply_relocate_add: "existing value is nonzero"): the module could not be loaded
 * again while the patch is. Upstream clears them when the module goes
 * (klp_clear_object_relocs, Linux 6.6); the object's post-unpatch callback, which
 * the livepatch core runs then, does the same here. text_poke, text_poke_sync and
 * text_mutex are not exported: kstack turns the __kstack_ksym_ names into livepatch
 * relocations against vmlinux, applied when this module loads.
 */
extern void *__kstack_ksym_text_poke(void *addr, const void *opcode, size_t len);
extern void __kstack_ksym_text_poke_sync(void);
extern struct mutex __kstack_ksym_text_mutex;

static void kstack_clear_object_relocs(struct klp_object *obj)
{
	static const char zero[8];
	struct klp_modinfo *info = THIS_MODULE->klp_info;
	char prefix[MODULE_NAME_LEN + 16];
	unsigned int i, j;

	if (!info || !obj->name)
		return;
	snprintf(prefix, sizeof(prefix), ".klp.rela.%s.", obj->name);
	mutex_lock(&__kstack_ksym_text_mutex);
	for (i = 1; i < info->hdr.e_shnum; i++) {
		Elf64_Shdr *sec = info->sechdrs + i;
		Elf64_Rela *relas = (void *)sec->sh_addr;
		char *base = (void *)info->sechdrs[sec->sh_info].sh_addr;

		if (!(sec->sh_flags & SHF_RELA_LIVEPATCH) ||
		    strncmp(info->secstrings + sec->sh_name, prefix, strlen(prefix)))
			continue;
		for (j = 0; j < sec->sh_size / sizeof(*relas); j++) {
			size_t size;

			switch (ELF64_R_TYPE(relas[j].r_info)) {
			case R_X86_64_64:
			case R_X86_64_PC64:
				size = 8;
				break;
			case R_X86_64_32:
			case R_X86_64_32S:
			case R_X86_64_PC32:
			case R_X86_64_PLT32:
				size = 4;
				break;
			default:
				continue;
			}
			__kstack_ksym_text_poke(base + relas[j].r_offset, zero, size);
		}
	}
	__kstack_ksym_text_poke_sync();
	mutex_unlock(&__kstack_ksym_text_mutex);
}
#endif

/*
 * The hooks of the patches this module holds. A member's hook file defines the
 * hooks it has (kstack/hooks.h); weak, so a patch without hooks links with NULL.
 */
#define KSTACK_MEMBER(index, id)						\
	extern int __kstack_hook_pre_apply_##index(struct klp_object *obj) __weak;	\
	extern void __kstack_hook_post_apply_##index(struct klp_object *obj) __weak;	\
	extern void __kstack_hook_pre_revert_##index(struct klp_object *obj) __weak;	\
	extern void __kstack_hook_post_revert_##index(struct klp_object *obj) __weak;
KSTACK_MEMBERS
#undef KSTACK_MEMBER

/*
 * What one kstack patch module tells the others, through the registry below. The
 * layout is shared by every kstack module that can be loaded at the same time:
 * change it only together with KSTACK_REGISTRY_ID.
 */
struct kstack_member {
	/* The patch's identity: the name of the patch's own module (kstack_<12 hex>). */
	const char *id;
	int (*pre_apply)(struct klp_object *obj);
	void (*post_apply)(struct klp_object *obj);
	void (*pre_revert)(struct klp_object *obj);
	void (*post_revert)(struct klp_object *obj);
};

struct kstack_entry {
	struct list_head node;
	const char *module;
	/* The members' apply hooks have run and their revert hooks have not. */
	bool live;
	unsigned int count;
	const struct kstack_member *members;
};

struct kstack_registry {
	struct mutex lock;
	struct list_head entries;
};

static const struct kstack_member kstack_members[] = {
#define KSTACK_MEMBER(index, member_id)					\
	{ .id = member_id,						\
	  .pre_apply = __kstack_hook_pre_apply_##index,			\
	  .post_apply = __kstack_hook_post_apply_##index,			\
	  .pre_revert = __kstack_hook_pre_revert_##index,			\
	  .post_revert = __kstack_hook_post_revert_##index },
	KSTACK_MEMBERS
#undef KSTACK_MEMBER
};

#define KSTACK_COUNT ARRAY_SIZE(kstack_members)

/*
 * The registry of loaded kstack patch modules, shared by all of them: a shadow
 * variable (Documentation/livepatch/shadow-vars.rst) of a fixed address, which the
 * livepatch core keeps for as long as the kernel runs. A cumulative module reads it
 * to learn which patches the kernel runs before it replaces them: the kernel runs
 * none of a replaced patch's callbacks (Documentation/livepatch/cumulative-patches.rst),
 * so the new module runs the hooks of the patches that leave, from their modules,
 * which stay loaded until the transition is complete.
 */
#define KSTACK_REGISTRY_OBJ ((void *)&klp_shadow_get_or_alloc)
#define KSTACK_REGISTRY_ID 0x6b73746b00000001UL /* "kstk", layout 1 */

static struct kstack_registry *kstack_registry;
static struct kstack_entry kstack_entry = {
	.module = KBUILD_MODNAME,
	.count = KSTACK_COUNT,
	.members = kstack_members,
};

static int kstack_registry_init(void *obj, void *shadow_data, void *ctor_data)
{
	struct kstack_registry *registry = shadow_data;

	mutex_init(&registry->lock);
	INIT_LIST_HEAD(&registry->entries);
	return 0;
}

static void kstack_unregister(void)
{
	mutex_lock(&kstack_registry->lock);
	list_del(&kstack_entry.node);
	mutex_unlock(&kstack_registry->lock);
}

/*
 * Where this module's transition stands, as its hook object's callbacks see it.
 * The livepatch core calls them under its own mutex, one transition at a time.
 */
enum kstack_phase { KSTACK_IDLE, KSTACK_APPLYING, KSTACK_APPLIED, KSTACK_REVERTING };
static enum kstack_phase kstack_phase;
/* For the transition that applies this module: which members are new... */
static bool kstack_new[KSTACK_COUNT];
/* ...and which members of the patches it replaces leave (in load order). */
static const struct kstack_member **kstack_dropped;
static unsigned int kstack_ndropped;

/* Whether another live module holds patch `id` (registry locked). */
static bool kstack_running(const char *id)
{
	struct kstack_entry *e;
	unsigned int i;

	list_for_each_entry(e, &kstack_registry->entries, node) {
		if (e == &kstack_entry || !e->live)
			continue;
		for (i = 0; i < e->count; i++)
			if (!strcmp(e->members[i].id, id))
				return true;
	}
	return false;
}

/* Whether this module holds patch `id`. */
static bool kstack_holds(const char *id)
{
	unsigned int i;

	for (i = 0; i < KSTACK_COUNT; i++)
		if (!strcmp(kstack_members[i].id, id))
			return true;
	return false;
}

/*
 * The members of the live modules this one replaces that it does not hold
 * (registry locked); with `out`, records them.
 */
static unsigned int kstack_find_dropped(const struct kstack_member **out)
{
	struct kstack_entry *e;
	unsigned int i, n = 0;

	list_for_each_entry(e, &kstack_registry->entries, node) {
		if (e == &kstack_entry || !e->live)
			continue;
		for (i = 0; i < e->count; i++) {
			if (kstack_holds(e->members[i].id))
				continue;
			if (out)
				out[n] = &e->members[i];
			n++;
		}
	}
	return n;
}

static void kstack_forget_dropped(void)
{
	kfree(kstack_dropped);
	kstack_dropped = NULL;
	kstack_ndropped = 0;
}

/*
 * Before the transition that applies this module: the patches that leave run
 * their pre-revert hooks (newest first, as reverting them would), then the
 * patches that are new run their pre-apply hooks (in stack order). Patches the
 * kernel already runs run nothing: their state carries over. A refusal takes
 * back what ran before it and fails the load.
 */
static int kstack_begin_apply(struct klp_object *obj)
{
	unsigned int i, j;
	int ret;

	mutex_lock(&kstack_registry->lock);
	for (i = 0; i < KSTACK_COUNT; i++)
		kstack_new[i] = !kstack_running(kstack_members[i].id);
	kstack_ndropped = KSTACK_REPLACE ? kstack_find_dropped(NULL) : 0;
	if (kstack_ndropped) {
		kstack_dropped = kcalloc(kstack_ndropped, sizeof(*kstack_dropped),
					 GFP_KERNEL);
		if (!kstack_dropped) {
			kstack_ndropped = 0;
			mutex_unlock(&kstack_registry->lock);
			return -ENOMEM;
		}
		kstack_find_dropped(kstack_dropped);
	}
	mutex_unlock(&kstack_registry->lock);

	for (i = kstack_ndropped; i-- > 0;)
		if (kstack_dropped[i]->pre_revert)
			kstack_dropped[i]->pre_revert(obj);
	for (i = 0; i < KSTACK_COUNT; i++) {
		if (!kstack_new[i] || !kstack_members[i].pre_apply)
			continue;
		ret = kstack_members[i].pre_apply(obj);
		if (!ret)
			continue;
		while (i-- > 0)
			if (kstack_new[i] && kstack_members[i].post_revert)
				kstack_members[i].post_revert(obj);
		for (j = 0; j < kstack_ndropped; j++)
			if (kstack_dropped[j]->post_apply)
				kstack_dropped[j]->post_apply(obj);
		kstack_forget_dropped();
		return ret;
	}
	kstack_phase = KSTACK_APPLYING;
	return 0;
}

/*
 * The hooks run around the transition of one object: vmlinux when the patch
 * changes it (always, for a cumulative module), else its first module.
 */
static bool kstack_hook_object(struct klp_object *obj)
{
	const char *name = KSTACK_HOOK_OBJECT;

	return name ? obj->name && !strcmp(obj->name, name) : !obj->name;
}

static int kstack_pre_patch(struct klp_object *obj)
{
	if (!kstack_hook_object(obj))
		return 0;
	return kstack_begin_apply(obj);
}

/*
 * After a transition to the patched state: one that applied this module (the
 * patches that left run their post-revert hooks, the new ones their post-apply
 * hooks; the replaced modules are live no more), or one that reversed a revert
 * of it (every member runs post-apply, as the kernel does for one patch).
 */
static void kstack_post_patch(struct klp_object *obj)
{
	struct kstack_entry *e;
	unsigned int i;

	if (!kstack_hook_object(obj))
		return;
	if (kstack_phase == KSTACK_APPLYING) {
		for (i = kstack_ndropped; i-- > 0;)
			if (kstack_dropped[i]->post_revert)
				kstack_dropped[i]->post_revert(obj);
		for (i = 0; i < KSTACK_COUNT; i++)
			if (kstack_new[i] && kstack_members[i].post_apply)
				kstack_members[i].post_apply(obj);
		kstack_forget_dropped();
		mutex_lock(&kstack_registry->lock);
		if (KSTACK_REPLACE)
			list_for_each_entry(e, &kstack_registry->entries, node)
				e->live = false;
		kstack_entry.live = true;
		mutex_unlock(&kstack_registry->lock);
	} else if (kstack_phase == KSTACK_REVERTING) {
		for (i = 0; i < KSTACK_COUNT; i++)
			if (kstack_members[i].post_apply)
				kstack_members[i].post_apply(obj);
	}
	kstack_phase = KSTACK_APPLIED;
}

/* Before this module's patch is reverted: every member leaves, newest first. */
static void kstack_pre_unpatch(struct klp_object *obj)
{
	unsigned int i;

	if (!kstack_hook_object(obj))
		return;
	kstack_phase = KSTACK_REVERTING;
	for (i = KSTACK_COUNT; i-- > 0;)
		if (kstack_members[i].pre_revert)
			kstack_members[i].pre_revert(obj);
}

/*
 * After a transition to the unpatched state: a revert of this module (every
 * member runs post-revert), or a reversed apply (the new members tear down what
 * their pre-apply set up; the patches that were to leave stay, and run post-apply
 * as after any reversed revert).
 */
static void kstack_post_unpatch_hooks(struct klp_object *obj)
{
	unsigned int i;

	if (!kstack_hook_object(obj))
		return;
	if (kstack_phase == KSTACK_APPLYING) {
		for (i = KSTACK_COUNT; i-- > 0;)
			if (kstack_new[i] && kstack_members[i].post_revert)
				kstack_members[i].post_revert(obj);
		for (i = 0; i < kstack_ndropped; i++)
			if (kstack_dropped[i]->post_apply)
				kstack_dropped[i]->post_apply(obj);
		kstack_forget_dropped();
	} else if (kstack_phase == KSTACK_REVERTING) {
		for (i = KSTACK_COUNT; i-- > 0;)
			if (kstack_members[i].post_revert)
				kstack_members[i].post_revert(obj);
	}
	mutex_lock(&kstack_registry->lock);
	kstack_entry.live = false;
	mutex_unlock(&kstack_registry->lock);
	kstack_phase = KSTACK_IDLE;
}

static void kstack_post_unpatch(struct klp_object *obj)
{
	kstack_post_unpatch_hooks(obj);
#ifdef KSTACK_MODULE_OBJECTS
	kstack_clear_object_relocs(obj);
#endif
}

static struct klp_object kstack_objs[] = {
#define KSTACK_OBJECT(index, objname) \
	{ .name = objname, .funcs = kstack_funcs_##index, \
	  .callbacks = { \
		.pre_patch = kstack_pre_patch, \
		.post_patch = kstack_post_patch, \
		.pre_unpatch = kstack_pre_unpatch, \
		.post_unpatch = kstack_post_unpatch, \
	  } },
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
	.replace = KSTACK_REPLACE,
#ifdef KSTACK_STATES
	.states = kstack_states,
#endif
};

static int __init kstack_patch_init(void)
{
	int ret;

	kstack_registry = klp_shadow_get_or_alloc(KSTACK_REGISTRY_OBJ,
						  KSTACK_REGISTRY_ID,
						  sizeof(*kstack_registry),
						  GFP_KERNEL,
						  kstack_registry_init, NULL);
	if (!kstack_registry)
		return -ENOMEM;
	mutex_lock(&kstack_registry->lock);
	list_add_tail(&kstack_entry.node, &kstack_registry->entries);
	mutex_unlock(&kstack_registry->lock);
	ret = klp_enable_patch(&kstack_patch);
	/* A module whose init fails is freed without its exit: leave now. */
	if (ret)
		kstack_unregister();
	return ret;
}

static void __exit kstack_patch_exit(void)
{
	kstack_unregister();
}

module_init(kstack_patch_init);
module_exit(kstack_patch_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION(KSTACK_PATCH_DESCRIPTION);
MODULE_INFO(livepatch, "Y");
MODULE_INFO(kstack_patch, KSTACK_PATCH_NAME);
