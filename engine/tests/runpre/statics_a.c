/* Two files with a static function of the same name, as the kernel has hundreds. */
extern int g;

static __attribute__((noinline, noclone)) int show(int x)
{
	return x * 7 + g;
}

int use_a(int x)
{
	return show(x) + 1;
}
