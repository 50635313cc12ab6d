/* __init functions share one section (.init.text), even with -ffunction-sections:
 * the assembler resolves calls between them without a relocation. */
extern int g;

static __attribute__((section(".init.text"), noinline, noclone)) int init_helper(int x)
{
	return x + g;
}

__attribute__((section(".init.text"))) int init_main(int x)
{
	return init_helper(x) * 2 + init_helper(x + 1);
}
