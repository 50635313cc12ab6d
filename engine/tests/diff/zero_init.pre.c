/* cflags: -ftrivial-auto-var-init=zero */
#include "kernel.h"

/*
 * With CONFIG_INIT_STACK_ALL_ZERO every local is zeroed already: initialising one
 * to zero is no change to the code.
 */
extern void fill(unsigned long *v);

int sum(void)
{
	unsigned long v[3];

	fill(v);
	return (int)(v[0] + v[1] + v[2]);
}
