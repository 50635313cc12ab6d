/*
 * Special sections as Linux 6.1 x86-64 lays them out, written with the shapes of
 * its macros (asm/bug.h, asm/extable.h, asm/jump_label.h, asm/alternative.h,
 * asm/cpufeature.h, asm/paravirt_types.h) and of what objtool adds (.orc_unwind,
 * .return_sites, .retpoline_sites, .static_call_sites). `patched` and `other` both
 * have entries; only `patched`'s may reach the output object.
 */
#define __stringify_1(x) #x
#define __stringify(x) __stringify_1(x)

struct static_key { int enabled; };
static struct static_key my_key;
#ifdef DDEBUG
static struct { const char *format; struct static_key key; } __UNIQUE_ID_ddebug7
	__attribute__((used, section("__dyndbg"))) = { "debug\n" };
#endif
#ifdef TRACEPOINT
/* A module's own tracepoint: its key in `struct tracepoint`, its static call. */
extern struct { const char *name; struct static_key key; } __tracepoint_my_event;
extern void __SCK__tp_func_my_event(void);
#endif
extern struct static_key exported_key;
extern char boot_cpu_data[];
extern void __SCK__my_call(void);
extern void __x86_indirect_thunk_rax(void);
extern void orig_insn(void), repl_insn(void), repl_other(void);
extern int printk(const char *fmt, ...);

#define BUG_ENTRY(flags)                                                   \
	asm volatile("1:\tud2\n"                                           \
		     ".pushsection __bug_table,\"aw\"\n"                   \
		     "2:\t.long 1b - .\n"                                  \
		     "\t.long %c0 - .\n"                                   \
		     "\t.word %c1\n"                                       \
		     "\t.word %c2\n"                                       \
		     "\t.org 2b+12\n"                                      \
		     ".popsection" : : "i" (__FILE__), "i" (__LINE__), "i" (flags))

#define EX_ENTRY(label_from, label_to)                                     \
	".pushsection __ex_table,\"a\"\n .balign 4\n"                      \
	" .long " #label_from " - .\n .long " #label_to " - .\n .long 3\n" \
	".popsection\n"

/* What objtool writes for every instruction boundary it describes. */
#define ORC(label)                                                         \
	".pushsection .orc_unwind_ip,\"a\"\n .long " #label " - .\n.popsection\n" \
	".pushsection .orc_unwind,\"a\"\n .word 8, 0\n .byte 0x05, 0x00\n.popsection\n"

static __attribute__((always_inline)) inline int key_on(struct static_key *key, int branch)
{
	asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n"
		 ".pushsection __jump_table, \"aw\"\n .balign 8\n"
		 " .long 1b - .\n .long %l[l_yes] - .\n .quad %c0 + %c1 - .\n"
		 ".popsection\n"
		 : : "i" (key), "i" (branch) : : l_yes);
	return 0;
l_yes:
	return 1;
}

static __attribute__((always_inline)) inline int cpu_has(void)
{
	asm goto("661: jmp 6f\n662:\n"
		 ".pushsection .altinstructions,\"a\"\n"
		 " .long 661b - .\n .long 6641f - .\n .word 3*32+21\n"
		 " .byte 662b-661b\n .byte 6651f-6641f\n"
		 ".popsection\n"
		 ".pushsection .altinstr_replacement,\"ax\"\n"
		 "6641: jmp %l[t_no]\n6651:\n"
		 ".popsection\n"
		 ".pushsection .altinstr_aux,\"ax\"\n"
		 "6: testb $2, boot_cpu_data+12(%%rip)\n"
		 " jnz %l[t_yes]\n jmp %l[t_no]\n"
		 ".popsection\n"
		 : : : : t_yes, t_no);
t_yes:
	return 1;
t_no:
	return 0;
}

#define ALTERNATIVE_CALL(orig, repl)                                      \
	asm volatile("661: call " #orig "\n662:\n"                         \
		     ".pushsection .altinstructions,\"a\"\n"               \
		     " .long 661b - .\n .long 6641f - .\n .word 7*32+1\n"  \
		     " .byte 662b-661b\n .byte 6651f-6641f\n"              \
		     ".popsection\n"                                       \
		     ".pushsection .altinstr_replacement,\"ax\"\n"         \
		     "6641: call " #repl "\n6651:\n"                       \
		     ".popsection\n" : : : "memory")

#define OBJTOOL_SITES()                                                    \
	asm volatile("1: call __SCK__my_call\n"                            \
		     ".pushsection .static_call_sites,\"a\"\n"             \
		     " .long 1b - .\n .long __SCK__my_call - .\n"          \
		     ".popsection\n"                                       \
		     "2: call __x86_indirect_thunk_rax\n"                  \
		     ".pushsection .retpoline_sites,\"a\"\n .long 2b - .\n.popsection\n" \
		     "3: lock; incl (%%rsp)\n"                             \
		     ".pushsection .smp_locks,\"a\"\n .balign 4\n .long 3b - .\n.popsection\n" \
		     "4: call *%%rax\n"                                    \
		     ".pushsection .parainstructions,\"a\"\n .balign 8\n"  \
		     " .quad 4b\n .byte 7\n .byte 2\n.popsection\n"        \
		     ORC(1b) ORC(4b)                                       \
		     : : : "memory", "rax")

int other(int x)
{
	int v = 0;

	BUG_ENTRY(1);
	asm volatile("3: movl (%1), %0\n4:\n" EX_ENTRY(3b, 4b) : "=r" (v) : "r" (&x));
	if (key_on(&exported_key, 0))
		v++;
	if (cpu_has())
		v += 2;
	ALTERNATIVE_CALL(orig_insn, repl_other);
	OBJTOOL_SITES();
	return v;
}

int patched(int x)
{
	int v = 0;

	if (x > 100)
		BUG_ENTRY(2);
	asm volatile("3: movl (%1), %0\n4:\n" EX_ENTRY(3b, 4b) : "=r" (v) : "r" (&x));
#ifdef DDEBUG
	/* pr_debug's shape: the key lives in the call site's descriptor. */
	if (key_on(&__UNIQUE_ID_ddebug7.key, 0))
		printk("debug\n");
#elif defined(TRACEPOINT)
	/* trace_my_event()'s shape: a jump label over a static call. */
	if (key_on(&__tracepoint_my_event.key, 0))
		asm volatile("8: call __SCK__tp_func_my_event\n"
			     ".pushsection .static_call_sites,\"a\"\n"
			     " .long 8b - .\n .long __SCK__tp_func_my_event - .\n"
			     ".popsection\n" : : : "memory");
#else
	if (key_on(&my_key, 1))
		printk("key on\n");
#endif
	if (cpu_has())
		v += 2;
	ALTERNATIVE_CALL(orig_insn, repl_insn);
#if !defined(DDEBUG) && !defined(TRACEPOINT) /* a module's static call would be refused like its static key */
	OBJTOOL_SITES();
#endif
#ifdef CALL_SITES
	/* objtool's call-depth tracking list (6.12), for a unit objtool ran on. */
	asm volatile("7: call printk\n.pushsection .call_sites,\"a\"\n .long 7b - .\n.popsection\n");
#endif
#ifdef WEIRD
	asm volatile("5: nop\n.pushsection .weird_table,\"a\"\n .long 5b - .\n.popsection\n");
#endif
	asm volatile("6: nop\n.pushsection .return_sites,\"a\"\n .long 6b - .\n.popsection\n");
	return v;
}
