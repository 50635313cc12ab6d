/* Stands in for the generated template: refers to the new function by its symbol. */
extern int __kstack_new_patched(int);

int (*const kstack_new_func)(int) = __kstack_new_patched;
