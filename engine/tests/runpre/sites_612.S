/*
 * One function as Debian's 6.12 configuration compiles it, for the sites that
 * differ from 6.1: 16 bytes of padding before the symbol (CONFIG_CALL_PADDING,
 * -fpatchable-function-entry=16,16, recorded in __patchable_function_entries),
 * endbr64 first (CONFIG_X86_KERNEL_IBT), then the fentry call; an alternative in
 * 6.12's 14-byte layout (u32 ft_flags); a retpoline call with the CS prefix
 * (-mindirect-branch-cs-prefix); a static call and a return-thunk jump. A unit of
 * vmlinux is compiled without objtool on 6.12 (objtool runs on vmlinux.o), so the
 * object has no .return_sites, .retpoline_sites nor .static_call_sites: run-pre
 * must find those sites from the branches, as objtool does.
 */
#ifdef SHIPPED
#define SECTION(name) .text
#else
#define SECTION(name) .text.name
#endif
#define FUNCTION(name) .section SECTION(name), "ax"; .p2align 4; \
	9: .skip 16, 0x90; \
	.pushsection __patchable_function_entries, "aw"; .quad 9b; .popsection; \
	.globl name; .type name, @function; name:
#define END(name) .size name, . - name

/* The assembler ALTERNATIVE of arch/x86/include/asm/alternative.h (6.12). */
.macro ALTERNATIVE orig, repl, ft_flags
661:	\orig
662:	.skip -(((665f-664f)-(662b-661b)) > 0) * ((665f-664f)-(662b-661b)),0x90
663:
	.pushsection .altinstructions, "a"
	.long 661b - .
	.long 664f - .
	.4byte \ft_flags
	.byte 663b-661b
	.byte 665f-664f
	.popsection
	.pushsection .altinstr_replacement, "ax"
664:	\repl
665:
	.popsection
.endm

FUNCTION(with_sites_612)
	endbr64
0:	call __fentry__
	.pushsection __mcount_loc, "a"; .quad 0b; .popsection
	push %rbx
	ALTERNATIVE "mov %rdi, %rax", "call alt_helper", 0x100
	ALTERNATIVE "", ".byte 0x0f, 0x01, 0xca", 0x114
	.byte 0x2e; call __x86_indirect_thunk_rax
	call __SCT__my_call
	pop %rbx
	jmp __x86_return_thunk
	int3
END(with_sites_612)

/* A callee and its caller, for call-depth tracking (retbleed=stuff), which
 * writes an accounting thunk at the end of the callee's padding and points the
 * direct call at it, and points retpoline and return sites at its own thunks. */
FUNCTION(callee_612)
	endbr64
1:	call __fentry__
	.pushsection __mcount_loc, "a"; .quad 1b; .popsection
	jmp __x86_return_thunk
	int3
END(callee_612)

FUNCTION(caller_612)
	endbr64
2:	call __fentry__
	.pushsection __mcount_loc, "a"; .quad 2b; .popsection
	call callee_612
	.byte 0x2e; call __x86_indirect_thunk_rax
	jmp __x86_return_thunk
	int3
END(caller_612)

/* A paravirt call as 6.12 writes it: an alternative whose replacement stands for
 * a direct call to what the indirect call loads (ALT_CALL_INSTR, ALT_CALL_ALWAYS:
 * ALT_FLAG_DIRECT_CALL << 16 | X86_FEATURE_ALWAYS). */
FUNCTION(pv_612)
	endbr64
3:	call __fentry__
	.pushsection __mcount_loc, "a"; .quad 3b; .popsection
	ALTERNATIVE "call *pv_ops+0x16c(%rip)", "call BUG_func", 0x20075
	jmp __x86_return_thunk
	int3
END(pv_612)

	.data
	.globl counter
counter: .long 0
