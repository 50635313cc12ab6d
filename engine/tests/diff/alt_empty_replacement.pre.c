#include "kernel.h"

/*
 * Two functions with a static_cpu_has(): the empty replacement of `first`'s second
 * entry starts where `second`'s replacement starts, in .altinstr_replacement.
 */
int first(int x)
{
	if (static_cpu_has(5))
		return helper_a(x);
	return x;
}

int second(int x)
{
	if (static_cpu_has(6))
		return helper_b(x);
	return x;
}
