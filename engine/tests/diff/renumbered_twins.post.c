#include "kernel.h"

/*
 * first gains a second static of the same name, with the same contents and the
 * same user as its old one: which of the two is the running kernel's cannot be
 * known. second's static is renumbered, and is still told apart by its user.
 */
int second(int x)
{
	static int hits;
	return hits += x * 3;
}

int first(int y)
{
	static int hits;
	if (y > 10) {
		static int hits;
		return hits += 1;
	}
	return hits += y;
}

