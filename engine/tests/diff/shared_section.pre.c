#include "kernel.h"

/* Functions that share .sched.text, as `__sched` puts them: calls between them are
 * resolved by the assembler, with no relocation. */
#define __sched __attribute__((__section__(".sched.text")))

static noinline __sched int first(int x)
{
	return helper_a(x) + 1;
}

__sched int middle(int x)
{
	return first(x) + 7;
}

__sched int last(int x)
{
	return middle(x) * 2;
}
