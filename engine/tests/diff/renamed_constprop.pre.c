/* cflags: -fipa-cp-clone --param ipa-cp-eval-threshold=1 */
/*
 * GCC numbers the clones of one function in the order it makes them: here
 * scale.constprop.0 is scale(x, 3) and scale.constprop.1 is scale(x, 200). The
 * post no longer needs the first, so scale(x, 200) becomes scale.constprop.0:
 * the same function, renumbered.
 */
#include "kernel.h"

static noinline int scale(int x, int factor)
{
	if (factor > 100)
		return helper_a(x) * factor;
	return x * factor + helper_b(factor);
}

int scale_by_200(int x)
{
	return scale(x, 200);
}

int scale_by_three(int x)
{
	return scale(x, 3);
}

int scale_by(int x, int y)
{
	return scale(x, y);
}
