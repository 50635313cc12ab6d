#include "kernel.h"

int checked(int x)
{
	WARN_ON(x > 5);
	return x * 2;
}

int flagged(int x)
{
	WARN_ON(x < 0);
	return x + 7;
}
