//! The configuration a prepared tree builds with must be the one the shipped kernel
//! was built with: `make olddefconfig` re-evaluates every option on this machine,
//! and an option that depends on a build tool's version (`CONFIG_PAHOLE_VERSION`
//! from `pahole --version`, scripts/pahole-version.sh) silently drops the options
//! that depend on it when the tool is missing or older. The kernel would still
//! build, but code under those options (`#ifdef CONFIG_DEBUG_INFO_BTF_MODULES` in
//! kernel/bpf/btf.c, `CONFIG_MODULE_ALLOW_BTF_MISMATCH` in kernel/module/main.c)
//! would not be the shipped code, and neither would every patch to it.

use std::collections::BTreeMap;
use std::fmt;

/// Options that may differ because they only name this machine's tools, with why
/// that cannot change code.
pub const TOOL_TEXT_ONLY: &[(&str, &str)] = &[(
    "CONFIG_CC_VERSION_TEXT",
    "the compiler's `--version` line (Debian's build calls `gcc-12`, kbuild here `gcc`, \
     the same compiler): only the banner string of init/version.c (LINUX_COMPILER) holds it",
)];

/// Tools whose absence on the machine that built the kernel its configuration
/// records: (the option, its value without the tool, the tool, where Kconfig reads
/// it). Kconfig asks this machine's tool instead (`$(shell,...)` when the
/// configuration is evaluated), so a tool the build machine lacked but this one has
/// changes the option: Debian built 6.12 without rustc (`CONFIG_RUSTC_VERSION=0`),
/// and with rustc in `PATH` here `make olddefconfig` sets it (and
/// `CONFIG_RUSTC_LLVM_VERSION`) from this rustc. Preparing hides such a tool, as the
/// build machine did not have it.
pub const TOOLS_THE_BUILD_LACKED: &[(&str, &str, &str, &str)] = &[(
    "CONFIG_RUSTC_VERSION",
    "0",
    "rustc",
    // 6.12: init/Kconfig `config RUSTC_VERSION`; scripts/Kconfig.include `rustc-version
    // := $(shell,$(srctree)/scripts/rustc-version.sh $(RUSTC))`, which prints 0 when
    // `$(RUSTC) --version` fails; `rustc-llvm-version` likewise.
    "scripts/Kconfig.include (rustc-version, rustc-llvm-version)",
)];

/// The tools of [`TOOLS_THE_BUILD_LACKED`] that the machine which built the kernel of
/// the `wanted` configuration did not have.
pub fn tools_the_build_lacked(wanted: &str) -> Vec<&'static str> {
    let options = options(wanted);
    TOOLS_THE_BUILD_LACKED
        .iter()
        .filter(|(option, absent, _, _)| options.get(option).copied().flatten() == Some(*absent))
        .map(|(_, _, tool, _)| *tool)
        .collect()
}

/// One option whose value is not the one asked for (`None`: not set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDifference {
    pub name: String,
    pub wanted: Option<String>,
    pub got: Option<String>,
}

impl fmt::Display for ConfigDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "not set".into());
        write!(
            f,
            "{}: {} instead of {}",
            self.name,
            show(&self.got),
            show(&self.wanted)
        )
    }
}

/// The options of a `.config`: `CONFIG_X=value`, and `# CONFIG_X is not set` as
/// `None`.
fn options(text: &str) -> BTreeMap<&str, Option<&str>> {
    text.lines()
        .filter_map(|line| {
            if let Some(rest) = line.strip_prefix("# ") {
                let name = rest.strip_suffix(" is not set")?;
                return name.starts_with("CONFIG_").then_some((name, None));
            }
            let (name, value) = line.split_once('=')?;
            name.starts_with("CONFIG_").then_some((name, Some(value)))
        })
        .collect()
}

/// The options `wanted` sets (or says are not set) that `got` does not have the
/// same way, but for [`TOOL_TEXT_ONLY`]. Options `wanted` does not mention are
/// Kconfig's to choose.
pub fn differences(wanted: &str, got: &str) -> Vec<ConfigDifference> {
    let got = options(got);
    options(wanted)
        .into_iter()
        .filter(|(name, _)| !TOOL_TEXT_ONLY.iter().any(|(n, _)| n == name))
        .filter_map(|(name, value)| {
            let have = got.get(name).copied().flatten();
            (have != value).then(|| ConfigDifference {
                name: name.to_owned(),
                wanted: value.map(str::to_owned),
                got: have.map(str::to_owned),
            })
        })
        .collect()
}

/// What to do about `differences`, when a tool's version explains them.
pub fn hint(differences: &[ConfigDifference]) -> Option<String> {
    let pahole = differences
        .iter()
        .find(|d| d.name == "CONFIG_PAHOLE_VERSION")?;
    let wanted = pahole.wanted.as_deref().unwrap_or("0");
    Some(format!(
        "the kernel was configured with pahole {wanted} (CONFIG_PAHOLE_VERSION={wanted}), this \
         machine has {}: install pahole (Debian: `apt-get install dwarves`) and prepare the \
         kernel again",
        match pahole.got.as_deref() {
            None | Some("0") => "none".to_owned(),
            Some(v) => format!("version {v}"),
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = "\
CONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\"
CONFIG_PAHOLE_VERSION=124
CONFIG_DEBUG_INFO_BTF=y
CONFIG_PAHOLE_HAS_SPLIT_BTF=y
CONFIG_DEBUG_INFO_BTF_MODULES=y
# CONFIG_MODULE_SIG_FORCE is not set
";

    #[test]
    fn rustc_is_hidden_where_the_shipped_kernel_was_configured_without_it() {
        // Debian's 6.12 cloud config (no Rust), and what `make olddefconfig` made of
        // it with rustc 1.95 in PATH.
        let shipped =
            "CONFIG_GCC_VERSION=120200\nCONFIG_RUSTC_VERSION=0\nCONFIG_RUSTC_LLVM_VERSION=0\n";
        assert_eq!(tools_the_build_lacked(shipped), ["rustc"]);
        let here = "CONFIG_GCC_VERSION=120200\nCONFIG_RUSTC_VERSION=109500\nCONFIG_RUSTC_LLVM_VERSION=220102\n";
        assert_eq!(differences(shipped, here).len(), 2);
        // A kernel built with rustc, and 6.1 (whose Kconfig has no RUSTC_VERSION),
        // are prepared with this machine's tools.
        assert_eq!(
            tools_the_build_lacked("CONFIG_RUSTC_VERSION=107800\n"),
            Vec::<&str>::new()
        );
        assert_eq!(tools_the_build_lacked(SHIPPED), Vec::<&str>::new());
    }

    #[test]
    fn the_same_config_but_for_the_compilers_name_has_no_difference() {
        let here = SHIPPED.replace("\"gcc-12 (", "\"gcc (");
        assert_eq!(differences(SHIPPED, &here), vec![]);
        // Options the wanted config does not mention are left to Kconfig.
        assert_eq!(
            differences(SHIPPED, &format!("{here}CONFIG_NEW=y\n")),
            vec![]
        );
    }

    #[test]
    fn options_a_missing_pahole_drops_are_named_with_the_hint() {
        // What `make olddefconfig` made of the shipped config without pahole.
        let here = "\
CONFIG_PAHOLE_VERSION=0
CONFIG_DEBUG_INFO_BTF=y
# CONFIG_MODULE_SIG_FORCE is not set
";
        let diffs = differences(SHIPPED, here);
        let names: Vec<String> = diffs.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "CONFIG_DEBUG_INFO_BTF_MODULES: not set instead of y",
                "CONFIG_PAHOLE_HAS_SPLIT_BTF: not set instead of y",
                "CONFIG_PAHOLE_VERSION: 0 instead of 124",
            ]
        );
        let hint = hint(&diffs).unwrap();
        assert!(
            hint.contains("pahole 124") && hint.contains("has none"),
            "{hint}"
        );
        assert!(hint.contains("apt-get install dwarves"), "{hint}");
    }

    #[test]
    fn an_option_set_where_the_shipped_one_is_not_is_a_difference() {
        let here = SHIPPED.replace(
            "# CONFIG_MODULE_SIG_FORCE is not set",
            "CONFIG_MODULE_SIG_FORCE=y",
        );
        let diffs = differences(SHIPPED, &here);
        assert_eq!(
            diffs,
            vec![ConfigDifference {
                name: "CONFIG_MODULE_SIG_FORCE".into(),
                wanted: None,
                got: Some("y".into()),
            }]
        );
        assert_eq!(hint(&diffs), None);
    }
}
