//! The files under `/proc` and `/sys` through which kstack reads the running kernel,
//! each with the kernel source that provides it. Users name these constants rather
//! than spelling the paths, so that a test can see every place the host is read.

/// Every kernel symbol with its address, type and module (kernel/kallsyms.c,
/// `kallsyms_open`); addresses read as zero without `CAP_SYSLOG`.
pub const PROC_KALLSYMS: &str = "/proc/kallsyms";
/// The running kernel's memory image as an ELF core file (fs/proc/kcore.c).
pub const PROC_KCORE: &str = "/proc/kcore";
/// The running kernel's `.notes` section, its build ID among them (kernel/ksysfs.c,
/// `notes_read`).
pub const SYS_KERNEL_NOTES: &str = "/sys/kernel/notes";
/// The running kernel's release, as `uname -r` prints it (kernel/utsname_sysctl.c).
pub const PROC_OSRELEASE: &str = "/proc/sys/kernel/osrelease";
/// The keys the calling process can see, keyrings included (security/keys/proc.c).
pub const PROC_KEYS: &str = "/proc/keys";
/// One directory per registered livepatch, named after its module
/// (kernel/livepatch/core.c, `klp_init_patch`).
pub const SYSFS_LIVEPATCH: &str = "/sys/kernel/livepatch";
/// Loaded modules, most recently loaded first (kernel/module/procfs.c: new modules
/// are added at the head of the `modules` list).
pub const PROC_MODULES: &str = "/proc/modules";
/// The taint bit mask (kernel/panic.c).
pub const PROC_TAINTED: &str = "/proc/sys/kernel/tainted";
