#include "kernel.h"

int forward(int x)
{
	return helper_a(x) + 1;
}

int unrelated(int x)
{
	return helper_b(x) * 2;
}
