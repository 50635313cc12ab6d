/* A livepatch symbol the kernel's sscanf would not parse: no ",sympos". */
extern int bad(void) __asm__(".klp.sym.vmlinux.no_position");

int call_bad(void)
{
	return bad() + 1;
}
