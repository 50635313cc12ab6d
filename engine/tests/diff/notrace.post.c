#include "kernel.h"

notrace int fast_path(int x)
{
	return helper_a(x) + 2;
}

int traced_path(int x)
{
	return helper_b(x) + 2;
}
