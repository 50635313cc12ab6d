#include "kernel.h"

static long history[8];
static int depth;

void record(long value)
{
	history[depth++ & 7] = value;
}

long recorded(int i)
{
	return history[i & 7];
}
