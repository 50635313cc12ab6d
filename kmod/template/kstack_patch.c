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
 * transition the hooks run around), and KSTACK_MODULE_OBJECTS when a module is one.
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
#define KSTACK_OBJECT(index, objname) \
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
 * The hooks run around the transition of one object: vmlinux when the patch
 * changes it, else its first module (when that module is patched).
 */
static bool kstack_hook_object(struct klp_object *obj)
{
	const char *name = KSTACK_HOOK_OBJECT;

	return name ? obj->name && !strcmp(obj->name, name) : !obj->name;
}

static int kstack_pre_patch(struct klp_object *obj)
{
	if (kstack_hook_object(obj) && __kstack_hook_pre_apply)
		return __kstack_hook_pre_apply(obj);
	return 0;
}

static void kstack_post_patch(struct klp_object *obj)
{
	if (kstack_hook_object(obj) && __kstack_hook_post_apply)
		__kstack_hook_post_apply(obj);
}

static void kstack_pre_unpatch(struct klp_object *obj)
{
	if (kstack_hook_object(obj) && __kstack_hook_pre_revert)
		__kstack_hook_pre_revert(obj);
}

static void kstack_post_unpatch(struct klp_object *obj)
{
	if (kstack_hook_object(obj) && __kstack_hook_post_revert)
		__kstack_hook_post_revert(obj);
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
