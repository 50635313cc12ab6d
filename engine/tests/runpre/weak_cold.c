/* A __weak default with an unlikely path, which GCC moves into the local
 * function `setup_hook.cold` that jumps back into the body: drivers/acpi/sleep.c's
 * acpi_s2idle_setup, overridden by an __init definition elsewhere. */
extern int g;
extern void report(int x) __attribute__((cold));
extern int step(int x);

__attribute__((weak)) int setup_hook(int x)
{
	int y = step(x);

	if (__builtin_expect(y < 0, 0)) {
		report(y);
		y = g;
	}
	y = step(y) + step(y + 1);
	return step(y * 3) + step(y + g);
}
