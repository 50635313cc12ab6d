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

/*
 * arch/x86/include/asm/cpufeature.h _static_cpu_has with asm/alternative.h's
 * ALTERNATIVE_TERNARY: two .altinstructions entries for one jump, the second with
 * an empty replacement, and a bit test in .altinstr_aux until they are applied.
 */
#define X86_FEATURE_ALWAYS (3 * 32 + 21)
extern char boot_cpu_capability[];

static inline __attribute__((__always_inline__)) int static_cpu_has(unsigned short bit)
{
	asm goto("661:\n\tjmp 6f\n662:\n"
		 ".skip -(((6651f-6641f)-(662b-661b)) > 0) * ((6651f-6641f)-(662b-661b)),0x90\n"
		 "663:\n"
		 ".pushsection .altinstructions,\"a\"\n"
		 " .long 661b - .\n .long 6641f - .\n .word %c[always]\n"
		 " .byte 663b-661b\n .byte 6651f-6641f\n"
		 " .long 661b - .\n .long 6642f - .\n .word %c[feature]\n"
		 " .byte 663b-661b\n .byte 6652f-6642f\n"
		 ".popsection\n"
		 ".pushsection .altinstr_replacement,\"ax\"\n"
		 "6641:\n\tjmp %l[t_no]\n6651:\n"
		 "6642:\n\t\n6652:\n"
		 ".popsection\n"
		 ".pushsection .altinstr_aux,\"ax\"\n"
		 "6:\n\ttestb %[bitnum], %P[cap_byte](%%rip)\n"
		 "\tjnz %l[t_yes]\n\tjmp %l[t_no]\n"
		 ".popsection\n"
		 : : [always] "i" (X86_FEATURE_ALWAYS), [feature] "i" (bit),
		     [bitnum] "i" (1 << (bit & 7)),
		     [cap_byte] "i" (&boot_cpu_capability[bit >> 3])
		 : : t_yes, t_no);
	return 1;
t_no:
	return 0;
t_yes:
	return 1;
}

/* Stand-ins for kernel functions the fixtures call. */
extern int printk(const char *fmt, ...);
extern void seq_puts(void *m, const char *s);
extern int helper_a(int);
extern int helper_b(int);

#endif
