extern int g;

static __attribute__((noinline, noclone)) int show(int x)
{
	return x * 9 - g;
}

int use_b(int x)
{
	return show(x) + 2;
}
