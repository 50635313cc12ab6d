/* Another file's __weak definition of the same hook, as arch/x86/events/core.c
 * defines arch_perf_update_userpage, which include/linux/perf_event.h declares
 * __weak: every definition is weak, and the linker keeps the first. */
extern int g;

__attribute__((weak)) int arch_hook(int x)
{
	return x * g + 3;
}
