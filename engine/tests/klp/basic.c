/*
 * Ordinary kernel-like C for the livepatch output object: strings, static and
 * exported data, a static helper that stays in the kernel, read-only tables that
 * belong to the patched function or are shared, a cold path, and once-flags packed
 * into one section (whose references only instruction decoding can tell apart).
 */
#define noinline __attribute__((noinline))
#define unlikely(x) __builtin_expect(!!(x), 0)

extern int printk(const char *fmt, ...);
extern void report_failure(const char *what, int value) __attribute__((cold));
extern unsigned long jiffies;
extern char *saved_command_line;

static int counter;
static const int own_table[] = { 1, 2, 3, 5, 8, 13, 21 };
static const int shared_table[] = { 4, 6, 8, 10 };
static const char *const names[] = { "zero", "one" };
static char once_a __attribute__((section(".data.once")));
static char once_b __attribute__((section(".data.once")));

static noinline int helper(int x)
{
	return x * 3 + counter;
}

noinline int callee(int x)
{
	return x ^ (int)jiffies;
}

int patched(int i)
{
	int sum;

	counter++;
	printk("patched %d %s\n", i, saved_command_line);
	if (unlikely(i == 12345)) {
		report_failure("patched", i);
		printk("really %d\n", i);
		printk("really really %d %d\n", i, counter);
		return -1;
	}
	if (!once_a) {
		once_a = 1;
		printk("first call\n");
	}
	sum = own_table[(unsigned)i % 7] + shared_table[i & 3];
	return sum + helper(i) + callee(i) + names[i & 1][0];
}

int unpatched(int i)
{
	if (!once_b) {
		once_b = 1;
		printk("unpatched first call\n");
	}
	return shared_table[i & 3] + helper(i);
}
