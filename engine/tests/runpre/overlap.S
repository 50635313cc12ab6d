/*
 * Instructions that overlap on purpose, as arch/x86/lib/retpoline.S (6.1) writes
 * its untraining sequences: retbleed_untrain_ret's `test $0xcc,%bl` holds
 * retbleed_return_thunk's `ret; int3`, and the function jumps back into the middle
 * of its own first instruction. Built with -DSHIPPED it goes to .text, as in a
 * kernel built without -ffunction-sections.
 */
#ifdef SHIPPED
	.section .text, "ax"
#else
	.section .text.untrain, "ax"
#endif
	.p2align 4
	.globl untrain
	.type untrain, @function
untrain:
	.byte 0xf6
	.globl return_thunk
return_thunk:
	ret
	int3
	lfence
	jmp return_thunk
	int3
	.size untrain, . - untrain
