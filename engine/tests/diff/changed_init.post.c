#include "kernel.h"

static int __init setup_thing(void)
{
	printk("setting up\n");
	return helper_a(2);
}

int (*setup_hook)(void) = setup_thing;

int runtime_path(int x)
{
	return helper_b(x);
}
