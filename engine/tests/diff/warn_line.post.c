#include "kernel.h"

/*
 * Lines added above the WARNs move their __LINE__: that is no change.
 */

int checked(int x)
{
	WARN_ON(x > 5);
	return x * 2;
}

int flagged(int x)
{
	/* Different flags in the bug_entry: a change. */
	WARN_ON_ONCE(x < 0);
	return x + 7;
}
