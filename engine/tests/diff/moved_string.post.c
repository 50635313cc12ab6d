#include "kernel.h"

/* New first: its strings come first in .rodata.str1.1 and move the others. */
void greeting(void *m)
{
	seq_puts(m, "a brand new greeting that is long\n");
	seq_puts(m, "and another one\n");
}

void goodbye(void *m)
{
	seq_puts(m, "goodbye\n");
}

void hello(void *m)
{
	seq_puts(m, "hello, world\n");
}
