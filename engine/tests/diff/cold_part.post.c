#include "kernel.h"

extern void report_failure(const char *what, int a) __attribute__((__cold__));

/* GCC moves the unlikely branch to checked_div.cold in .text.unlikely.checked_div. */
int checked_div(int a, int b)
{
	if (unlikely(b == 0)) {
		report_failure("division by zero!", a);
		return helper_a(a);
	}
	return a / b;
}
