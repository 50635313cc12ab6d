#include "kernel.h"

/*
 * `second` grows before its static_cpu_has(), so the jump of its replacement
 * has another addend; `first` is the same.
 */
int first(int x)
{
	if (static_cpu_has(5))
		return helper_a(x);
	return x;
}

int second(int x)
{
	x = helper_a(x) * 3;
	if (static_cpu_has(6))
		return helper_b(x);
	return x;
}
