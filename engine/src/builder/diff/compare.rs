//! Why two fingerprints differ, in words: what a report's reasons say.

use std::collections::{BTreeMap, BTreeSet};

use super::entities::Kind;
use super::shape::{EntryPrint, Fingerprint, NormRel, Shape};

/// The same things are referred to, from other places.
const RELOCATIONS_MOVED: &str = "relocations moved";

/// At most this many relocation reasons per piece: enough to say what changed.
const MAX_RELOC_REASONS: usize = 4;

/// Why two fingerprints differ; empty when they do not.
pub(super) fn compare(
    kind: Kind,
    pre: &Fingerprint,
    post: &Fingerprint,
    binding_changed: bool,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if binding_changed {
        reasons.push("binding (static or not)".to_owned());
    }
    if pre.placement != post.placement {
        reasons.push(format!("section {} -> {}", pre.placement, post.placement));
    }
    let what = match kind {
        Kind::Function => "code",
        Kind::Data => "contents",
    };
    shape_reasons("", what, &pre.main, &post.main, &mut reasons);
    if pre.parts.len() != post.parts.len() {
        reasons.push(format!(
            "cold parts {} -> {}",
            pre.parts.len(),
            post.parts.len()
        ));
    } else {
        for (a, b) in pre.parts.iter().zip(&post.parts) {
            shape_reasons("cold part: ", "code", a, b, &mut reasons);
        }
    }
    // Entries move with the code they point into: they are worth a reason only
    // when nothing else explains the change.
    if pre.specials != post.specials && reasons.is_empty() {
        let sections: BTreeSet<&String> = pre
            .specials
            .iter()
            .chain(&post.specials)
            .map(|entry| &entry.section)
            .collect();
        for section in sections {
            let select = |list: &'_ [EntryPrint]| -> Vec<EntryPrint> {
                list.iter()
                    .filter(|e| &e.section == section)
                    .cloned()
                    .collect()
            };
            let (a, b) = (select(&pre.specials), select(&post.specials));
            if a.len() != b.len() {
                reasons.push(format!("{section}: {} -> {} entries", a.len(), b.len()));
            } else if a != b {
                reasons.push(format!("{section}: entries differ"));
            }
        }
    }
    reasons
}

fn shape_reasons(prefix: &str, what: &str, pre: &Shape, post: &Shape, reasons: &mut Vec<String>) {
    if pre.size != post.size {
        reasons.push(format!("{prefix}size {:#x} -> {:#x}", pre.size, post.size));
    }
    let bytes_differ = pre.bytes != post.bytes;
    if bytes_differ {
        reasons.push(format!("{prefix}{what}"));
    }
    let mut found = reloc_reasons(&pre.relocs, &post.relocs);
    // Relocations that only moved say nothing that a change of the bytes has not.
    if bytes_differ {
        found.retain(|r| r != RELOCATIONS_MOVED);
    }
    if found.len() > MAX_RELOC_REASONS {
        let more = found.len() - MAX_RELOC_REASONS;
        found.truncate(MAX_RELOC_REASONS);
        found.push(format!("{more} more relocation differences"));
    }
    reasons.extend(found.into_iter().map(|r| format!("{prefix}{r}")));
}

/// Relocation differences in words: "relocation target X -> Y" when the same
/// places refer to other things, else what is referred to in addition or no more.
fn reloc_reasons(pre: &[NormRel], post: &[NormRel]) -> Vec<String> {
    if pre == post {
        return Vec::new();
    }
    let same_places = pre.len() == post.len()
        && pre
            .iter()
            .zip(post)
            .all(|(a, b)| a.offset == b.offset && a.r_type == b.r_type);
    let mut out = Vec::new();
    let mut push = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    if same_places {
        for (a, b) in pre.iter().zip(post) {
            if a.target != b.target {
                push(format!(
                    "relocation target {} -> {}",
                    short(&a.target),
                    short(&b.target)
                ));
            }
        }
        return out;
    }
    let (before, after) = (count_targets(pre), count_targets(post));
    for (&(target, call), &n) in &after {
        if before.get(&(target, call)).copied().unwrap_or(0) < n {
            push(if call {
                format!("new callee {}", short(target))
            } else {
                format!("new reference {}", short(target))
            });
        }
    }
    for (&(target, call), &n) in &before {
        if after.get(&(target, call)).copied().unwrap_or(0) < n {
            push(if call {
                format!("no longer calls {}", short(target))
            } else {
                format!("no longer references {}", short(target))
            });
        }
    }
    if out.is_empty() {
        out.push(RELOCATIONS_MOVED.to_owned());
    }
    out
}

/// How often each target is referred to, by branches (`true`) and otherwise.
fn count_targets(list: &[NormRel]) -> BTreeMap<(&str, bool), usize> {
    let mut m = BTreeMap::new();
    for r in list {
        *m.entry((r.target.as_str(), r.branch)).or_default() += 1;
    }
    m
}

/// Long string literals shortened for a reason line.
fn short(target: &str) -> String {
    const MAX: usize = 60;
    if target.chars().count() <= MAX {
        target.to_owned()
    } else {
        let cut: String = target.chars().take(MAX).collect();
        format!("{cut}...")
    }
}
#[cfg(test)]
mod tests {
    use object::elf;

    use super::*;

    fn rel(offset: u64, r_type: elf::RelocationType, target: &str) -> NormRel {
        NormRel {
            offset,
            r_type,
            target: target.to_owned(),
            branch: r_type == elf::R_X86_64_PLT32,
        }
    }

    #[test]
    fn relocation_reasons_name_what_changed() {
        let call = elf::R_X86_64_PLT32;
        let abs = elf::R_X86_64_32S;
        let pre = [rel(1, call, "__fentry__"), rel(9, abs, "\"a\"")];
        let swapped = [rel(1, call, "__fentry__"), rel(9, abs, "\"b\"")];
        assert_eq!(
            reloc_reasons(&pre, &swapped),
            ["relocation target \"a\" -> \"b\""]
        );
        let more = [
            rel(1, call, "__fentry__"),
            rel(9, abs, "\"a\""),
            rel(14, call, "helper"),
        ];
        assert_eq!(reloc_reasons(&pre, &more), ["new callee helper"]);
        assert_eq!(reloc_reasons(&more, &pre), ["no longer calls helper"]);
        assert!(reloc_reasons(&pre, &pre).is_empty());
    }
}
