#include "kernel.h"

/* Two functions with a static of the same name: GCC numbers them hits.1 (second), hits.0. */
int second(int x)
{
	static int hits;
	return hits += x * 3;
}

int first(int y)
{
	static int hits;
	return hits += y;
}

