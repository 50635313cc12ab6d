#include "kernel.h"

/* A body without an fentry call whose address is stored: callers through the
 * pointer cannot be patched in its place. */
static notrace noinline long body(int x)
{
	return helper_a(x) + 2;
}

long caller(int x)
{
	return body(x);
}

long (*hook)(int) = body;
