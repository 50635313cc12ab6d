//! Names without the numbering GCC adds, so that pre and post objects correlate.

/// The name with GCC's numbering removed: `foo.constprop.0` → `foo.constprop`,
/// `count.3` → `count`, `__UNIQUE_ID_ddebug123` → `__UNIQUE_ID_ddebug`. The
/// clone kind stays: `foo.isra` and `foo.constprop` have different calling
/// conventions and are different functions.
pub fn normalize_name(name: &str) -> String {
    let mut parts = name.split('.');
    let mut base = parts.next().unwrap_or("").to_owned();
    // `__UNIQUE_ID(prefix)` appends `__COUNTER__` (include/linux/compiler-gcc.h).
    if base.starts_with("__UNIQUE_ID_") {
        base.truncate(base.trim_end_matches(|c: char| c.is_ascii_digit()).len());
    }
    for part in parts {
        if !part.is_empty() && !part.bytes().all(|b| b.is_ascii_digit()) {
            base.push('.');
            base.push_str(part);
        }
    }
    base
}

/// `foo.cold` or `foo.isra.0.cold.3` → `foo` / `foo.isra.0`: the part of a function
/// that GCC moved to `.text.unlikely`, entered by a jump from the function.
pub(super) fn cold_parent(name: &str) -> Option<&str> {
    if let Some(parent) = name.strip_suffix(".cold") {
        return Some(parent);
    }
    let (rest, number) = name.rsplit_once('.')?;
    if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
        return rest.strip_suffix(".cold");
    }
    None
}

/// A section's name without the numbering GCC put in it (`.rodata.__func__.12`).
pub(super) fn normalize_section(name: &str) -> String {
    name.split('.')
        .filter(|part| part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_gcc_numbering_but_keep_clone_kinds() {
        assert_eq!(normalize_name("foo.constprop.0"), "foo.constprop");
        assert_eq!(normalize_name("foo.constprop.1"), "foo.constprop");
        assert_eq!(normalize_name("foo.isra.0"), "foo.isra");
        assert_eq!(normalize_name("foo.part.3"), "foo.part");
        assert_eq!(normalize_name("foo.lto_priv.0"), "foo.lto_priv");
        assert_eq!(normalize_name("count.2"), "count");
        assert_eq!(normalize_name("__func__.432"), "__func__");
        assert_eq!(
            normalize_name("__UNIQUE_ID_ddebug123"),
            "__UNIQUE_ID_ddebug"
        );
        assert_eq!(
            normalize_name("__UNIQUE_ID___addressable_foo567.12"),
            "__UNIQUE_ID___addressable_foo"
        );
        assert_eq!(normalize_name("plain"), "plain");
        assert_eq!(normalize_name("x86_64_thing2"), "x86_64_thing2");
    }

    #[test]
    fn cold_parts_name_their_parent() {
        assert_eq!(cold_parent("foo.cold"), Some("foo"));
        assert_eq!(cold_parent("foo.isra.0.cold"), Some("foo.isra.0"));
        assert_eq!(cold_parent("foo.cold.7"), Some("foo"));
        assert_eq!(cold_parent("foo.constprop.0"), None);
        assert_eq!(cold_parent("cold"), None);
    }
}
