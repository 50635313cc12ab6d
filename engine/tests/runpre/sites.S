/*
 * One function with every kind of site the kernel rewrites at boot or later,
 * written the way the kernel's macros and objtool write them (6.1): the fentry
 * call, a static key, an alternative with a replacement that calls, an empty one
 * (like clac), a retpoline call, a static call, a LOCK prefix, a paravirt call and
 * a return-thunk jump. Built with -DSHIPPED every function goes to .text, as in a
 * kernel built without -ffunction-sections.
 */
#ifdef SHIPPED
#define SECTION(name) .text
#else
#define SECTION(name) .text.name
#endif
#define FUNCTION(name) .section SECTION(name), "ax"; .globl name; .type name, @function; .p2align 4; name:
#define END(name) .size name, . - name

/* The assembler ALTERNATIVE of arch/x86/include/asm/alternative.h (6.1). */
.macro ALTERNATIVE orig, repl, feature
661:	\orig
662:	.skip -(((665f-664f)-(662b-661b)) > 0) * ((665f-664f)-(662b-661b)),0x90
663:
	.pushsection .altinstructions, "a"
	.long 661b - .
	.long 664f - .
	.word \feature
	.byte 663b-661b
	.byte 665f-664f
	.popsection
	.pushsection .altinstr_replacement, "ax"
664:	\repl
665:
	.popsection
.endm

FUNCTION(with_sites)
0:	call __fentry__
	.pushsection __mcount_loc, "a"; .quad 0b; .popsection
	push %rbx
	/* A static key, off: objtool made the jmp a 5-byte nop. */
1:	.byte 0x0f, 0x1f, 0x44, 0x00, 0x00
	.pushsection __jump_table, "aw"; .balign 8
	.long 1b - .; .long .Lyes - .; .quad some_key - .
	.popsection
	mov $1, %eax
	jmp .Lout
.Lyes:
	mov $2, %eax
.Lout:
	ALTERNATIVE "mov %rdi, %rax", "call alt_helper", 0x100
	ALTERNATIVE "", ".byte 0x0f, 0x01, 0xca", 0x114
2:	call __x86_indirect_thunk_rax
	.pushsection .retpoline_sites, "a"; .long 2b - .; .popsection
3:	call __SCT__my_call
	.pushsection .static_call_sites, "a"; .long 3b - .; .long __SCK__my_call - .; .popsection
4:	lock incl counter(%rip)
	.pushsection .smp_locks, "a"; .long 4b - .; .popsection
5:	call *pv_ops+8(%rip)
6:	.pushsection .parainstructions, "a"; .balign 8
	.quad 5b; .byte 1; .byte 6b - 5b; .balign 8
	.popsection
	pop %rbx
7:	jmp __x86_return_thunk
	.pushsection .return_sites, "a"; .long 7b - .; .popsection
END(with_sites)

/* A static call as a tail call (STATIC_CALL_SITE_TAIL in the key's low bit). */
FUNCTION(tail_static)
8:	call __fentry__
	.pushsection __mcount_loc, "a"; .quad 8b; .popsection
9:	jmp __SCT__my_call
	.pushsection .static_call_sites, "a"; .long 9b - .; .long __SCK__my_call + 1 - .; .popsection
END(tail_static)

	.data
	.globl counter
counter: .long 0
