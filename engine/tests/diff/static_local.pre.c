#include "kernel.h"

int count_calls(void)
{
	static int calls;
	return ++calls;
}
