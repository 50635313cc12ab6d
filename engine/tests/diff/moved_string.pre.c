#include "kernel.h"

void hello(void *m)
{
	seq_puts(m, "hello, world\n");
}

void goodbye(void *m)
{
	seq_puts(m, "goodbye\n");
}
