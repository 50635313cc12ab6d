# Functions that share a section, as `__sched` and `__lockfunc` put them
# (.sched.text, .spinlock.text), with unwind entries as objtool writes them: one
# where the state changes, so none at the start of a function whose first
# instruction has the state the code before it ended with.
	.section .sched.text,"ax",@progbits
	.type first, @function
first:
	call __fentry__
	lea 1(%rdi,%rdi,2), %eax
	ret
	.size first, .-first

	.globl middle
	.type middle, @function
middle:
	call __fentry__
	push %rbx
1:	call first
	mov %eax, %ebx
	call printk
	add %ebx, %eax
	pop %rbx
2:	ret
	.size middle, .-middle

	.globl last
	.type last, @function
last:
	call __fentry__
	call middle
	call first
	ret
	.size last, .-last

	.globl shorty
	.type shorty, @function
shorty:
	call __fentry__
	jmp 3f
	.size shorty, .-shorty
	.type helper, @function
helper:
3:	xor %eax, %eax
	ret
	.size helper, .-helper

	.section .orc_unwind_ip,"a",@progbits
	.long first - .
	.long 1b - .
	.long 2b - .
	.long shorty - .
	.section .orc_unwind,"a",@progbits
	.byte 0x11, 0, 0, 0, 0x05, 0
	.byte 0x22, 0, 0, 0, 0x05, 0
	.byte 0x33, 0, 0, 0, 0x05, 0
	.byte 0x44, 0, 0, 0, 0x05, 0
