//! Kernel symbols with a fixed meaning to a live-patch tool.

/// The ftrace entry hook that `-pg -mfentry` calls first thing in every traceable
/// function; livepatch redirects a function through it (kernel/livepatch/patch.c,
/// `klp_patch_func` via `ftrace_location`; arch/x86/kernel/ftrace_64.S).
pub const FENTRY: &str = "__fentry__";

/// Furthest offset from a function's start of the `call __fentry__` relocation: the
/// `e8` opcode sits at 0 so the field at 1, or after a 4-byte `endbr64` with
/// `CONFIG_X86_KERNEL_IBT` (arch/x86/include/asm/ibt.h).
pub const FENTRY_MAX_RELOC_OFFSET: u64 = 5;

/// The return thunks that `jmp __x86_return_thunk` may be pointed at
/// (arch/x86/kernel/cpu/bugs.c, `set_return_thunk`; arch/x86/lib/retpoline.S).
pub const RETURN_THUNKS: &[&str] = &[
    "__x86_return_thunk",
    "retbleed_return_thunk",
    "srso_return_thunk",
    "srso_alias_return_thunk",
    "its_return_thunk",
    "call_depth_return_thunk",
];

/// Retpoline thunks, one per register: `__x86_indirect_thunk_<reg>`
/// (arch/x86/lib/retpoline.S).
pub const RETPOLINE_THUNK_PREFIX: &str = "__x86_indirect_thunk_";

/// The retpoline thunks that count call depth, one per register, which retpoline
/// call and jump sites are pointed at with call-depth tracking (`retbleed=stuff`;
/// arch/x86/kernel/alternative.c `emit_call_track_retpoline`, arch/x86/lib/retpoline.S).
pub const CALL_DEPTH_CALL_THUNK_PREFIX: &str = "__x86_indirect_call_thunk_";
pub const CALL_DEPTH_JUMP_THUNK_PREFIX: &str = "__x86_indirect_jump_thunk_";

/// Indirect-branch thunks that a retpoline site may call instead of the register
/// (ITS mitigation, arch/x86/kernel/alternative.c `emit_its_trampoline`); dynamic
/// ones live outside the kernel's text.
pub const ITS_THUNK_PREFIX: &str = "__x86_indirect_its_thunk_";

/// The symbols objtool gives a function's padding (`--prefix`, `CONFIG_PREFIX_SYMBOLS`;
/// tools/objtool/check.c `add_prefix_symbol`): `__pfx_<function>`.
pub const PREFIX_SYMBOL_PREFIX: &str = "__pfx_";

/// What an alternative's replacement calls when the kernel writes a direct call to
/// the target an indirect call site loads (`ALT_CALL_INSTR`, `ALT_FLAG_DIRECT_CALL`;
/// 6.12's paravirt calls, arch/x86/include/asm/alternative.h): the kernel computes
/// the target (`alt_replace_call`, arch/x86/kernel/alternative.c) and writes a call
/// to it, or no-ops when the target is `nop_func`; never a call to this.
pub const ALT_CALL_PLACEHOLDER: &str = "BUG_func";

/// Static call trampolines and keys (`STATIC_CALL_TRAMP_PREFIX`,
/// `STATIC_CALL_KEY_PREFIX`, include/linux/static_call_types.h): a trampoline is one
/// `jmp` that `static_call_update()` retargets, or turns into `ret`.
pub const STATIC_CALL_TRAMP_PREFIX: &str = "__SCT__";
pub const STATIC_CALL_KEY_PREFIX: &str = "__SCK__";

/// The symbols that bound the kernel image's text (the linker script,
/// arch/x86/kernel/vmlinux.lds.S).
pub const TEXT_START: &str = "_stext";
pub const TEXT_END: &str = "_etext";

/// The byte `free_initmem()` fills freed `__init` code with (`POISON_FREE_INITMEM`,
/// include/linux/poison.h; arch/x86/mm/init.c).
pub const POISON_FREE_INITMEM: u8 = 0xcc;

/// The static lockdep class key that `init_waitqueue_head`, `init_completion`,
/// `mutex_init`, `spin_lock_init` and their like declare at each use (`static struct
/// lock_class_key __key;`, include/linux/wait.h, completion.h, mutex.h). Without
/// `CONFIG_LOCKDEP` the struct is empty (include/linux/lockdep_types.h): each is a
/// zero-size object that nothing reads, all of a file's at one address. A live
/// patch gives its code its own (zero-size) copies.
pub const LOCKDEP_KEY_STATIC: &str = "__key";

/// The static flags of the kernel's print-once and do-once helpers, by name without
/// GCC's numbering: `DO_ONCE_LITE` (`WARN_ONCE`, `printk_once`, `pr_*_once`;
/// include/linux/once_lite.h), `DO_ONCE` (include/linux/once.h) and its static key,
/// `WARN_ON_ONCE`'s flag where BUG flags cannot carry it (include/asm-generic/bug.h),
/// and `printk_deferred_once`'s (include/linux/printk.h); and the rate-limit state
/// of `printk_ratelimited`, `pr_*_ratelimited` and `DEFINE_RATELIMIT_STATE` in a
/// function (`_rs`, include/linux/printk.h). A live patch gives its code fresh
/// copies of these: sharing the running kernel's would mean finding the one of many
/// same-named statics, for no gain (a fresh flag may print once more, a fresh
/// rate-limit window one more burst).
pub const ONCE_STATICS: &[&str] = &[
    "__already_done",
    "___done",
    "___once_key",
    "__warned",
    "__print_once",
    "_rs",
];
