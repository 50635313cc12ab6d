#include "kernel.h"

int count_calls(void)
{
	static int calls;
	return ++calls;
}

/* A new static local of the same name: GCC renumbers the old calls.0 to calls.1. */
int count_other(void)
{
	static int calls;
	return calls += 2;
}
