# Two relocations to one location, which the kernel would refuse to apply.
	.section .text.twice,"ax",@progbits
	.globl twice
twice:
	.reloc ., R_X86_64_PC32, ".klp.sym.vmlinux.foo.isra.0,0"-4
	.reloc ., R_X86_64_PC32, ".klp.sym.vmlinux.foo.isra.0,0"-4
	.long 0
	ret
