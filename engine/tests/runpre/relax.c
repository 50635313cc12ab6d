extern int g;
extern void report(const char *what, int x);

static __attribute__((noinline, noclone)) int helper(int x)
{
	return x * 3 + g;
}

static __attribute__((noinline, noclone)) int helper2(int x)
{
	return x * 5 - g;
}

int relax(int x)
{
	if (x > 10)
		return helper(x + 1);
	if (x < -5)
		return helper2(x);
	if (x == 3)
		report("three", x);
	return x - 1;
}
