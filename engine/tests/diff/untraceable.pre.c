#include "kernel.h"

/*
 * What SYSCALL_DEFINE and `inline` leave behind: bodies without an fentry call
 * (the kernel's `inline` is `notrace`), emitted out of line, reached only through
 * traceable wrappers. `body` changes; `relay` does not, but calls it.
 */
static notrace noinline long body(int x)
{
	return helper_a(x) + helper_b(x) * 3;
}

static notrace noinline long relay(int x)
{
	return body(x + 1) - 1;
}

long __x64_sys_thing(int x)
{
	return body(x);
}

long __ia32_sys_thing(int x)
{
	return body(x & 0xffff);
}

long outer(int x)
{
	return relay(x) + 5;
}

long unrelated(int x)
{
	return helper_a(x) * 7;
}

static int __init boot_setup(void)
{
	return (int)body(0);
}
void *keep_boot_setup = boot_setup;
