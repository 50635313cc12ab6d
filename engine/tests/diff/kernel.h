/* What the fixtures need of the kernel's headers, reduced to the mechanism. */
#ifndef KSTACK_DIFF_FIXTURE_KERNEL_H
#define KSTACK_DIFF_FIXTURE_KERNEL_H

/* include/linux/init.h */
#define __init __attribute__((__section__(".init.text"))) __attribute__((__cold__))
/* include/linux/compiler_types.h */
#define notrace __attribute__((__no_instrument_function__))
#define noinline __attribute__((__noinline__))
#define unlikely(x) __builtin_expect(!!(x), 0)

/* include/asm-generic/bug.h */
#define BUGFLAG_WARNING (1 << 0)
#define BUGFLAG_ONCE (1 << 1)

/*
 * arch/x86/include/asm/bug.h, _BUG_FLAGS with CONFIG_DEBUG_BUGVERBOSE and
 * CONFIG_GENERIC_BUG_RELATIVE_POINTERS: a ud2 and a 12-byte struct bug_entry.
 */
#define __WARN_FLAGS(flags)                                                   \
	asm volatile("1:\tud2\n"                                              \
		     ".pushsection __bug_table,\"aw\"\n"                      \
		     "2:\t.long 1b - .\n"                                     \
		     "\t.long %c0 - .\n"                                      \
		     "\t.word %c1\n"                                          \
		     "\t.word %c2\n"                                          \
		     "\t.org 2b+%c3\n"                                        \
		     ".popsection"                                            \
		     : : "i"(__FILE__), "i"(__LINE__), "i"(flags), "i"(12))

#define WARN_ON(condition) ({                                                 \
	int __ret_warn_on = !!(condition);                                    \
	if (unlikely(__ret_warn_on))                                          \
		__WARN_FLAGS(BUGFLAG_WARNING);                                \
	unlikely(__ret_warn_on);                                              \
})

#define WARN_ON_ONCE(condition) ({                                            \
	int __ret_warn_on = !!(condition);                                    \
	if (unlikely(__ret_warn_on))                                          \
		__WARN_FLAGS(BUGFLAG_WARNING | BUGFLAG_ONCE);                 \
	unlikely(__ret_warn_on);                                              \
})

/* Stand-ins for kernel functions the fixtures call. */
extern int printk(const char *fmt, ...);
extern void seq_puts(void *m, const char *s);
extern int helper_a(int);
extern int helper_b(int);

#endif
