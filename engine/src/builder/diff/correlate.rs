//! The differ proper: pairs pre and post entities by name (and, among same-named
//! ones, by content and by who refers to them), compares each pair, and says what a
//! live patch cannot do.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use kstack_kfacts::symbols::FENTRY;

use super::compare::compare;
use super::entities::{Entity, Kind, entities};
use super::model::{Class, Elf};
use super::shape::{Namer, fnv1a};
use super::{DataReport, DiffOptions, DiffReport, FunctionReport, Refusal, RefusalKind, Status};

pub(super) struct Differ<'a, 'd> {
    pre: &'a Elf<'d>,
    post: &'a Elf<'d>,
    pre_entities: Vec<Entity>,
    post_entities: Vec<Entity>,
}

/// A correlated pair (or a lone entity) by indices into the entity lists.
type Pair = (Option<usize>, Option<usize>);

impl<'a, 'd> Differ<'a, 'd> {
    pub(super) fn new(pre: &'a Elf<'d>, post: &'a Elf<'d>) -> Self {
        Differ {
            pre,
            post,
            pre_entities: entities(pre),
            post_entities: entities(post),
        }
    }

    pub(super) fn report(&self, opts: &DiffOptions) -> DiffReport {
        let (pairs, indistinct) = self.correlate();

        // Correlated names: what references to either side of a pair compare as.
        let mut pre_names = HashMap::new();
        let mut post_names = HashMap::new();
        for &(a, b) in &pairs {
            match (a, b) {
                (Some(a), Some(b)) => {
                    let (a, b) = (&self.pre_entities[a], &self.post_entities[b]);
                    let name = self.post.sym(b.sym).name.clone();
                    pre_names.insert(a.sym, name.clone());
                    post_names.insert(b.sym, name);
                    for (i, &part) in b.parts.iter().enumerate() {
                        let name = self.post.sym(part).name.clone();
                        if let Some(&pre_part) = a.parts.get(i) {
                            pre_names.insert(pre_part, name.clone());
                        }
                        post_names.insert(part, name);
                    }
                    for &pre_part in a.parts.iter().skip(b.parts.len()) {
                        let name = format!("{} (removed)", self.pre.sym(pre_part).name);
                        pre_names.insert(pre_part, name);
                    }
                }
                (Some(a), None) => {
                    let a = &self.pre_entities[a];
                    for &sym in std::iter::once(&a.sym).chain(&a.parts) {
                        let name = format!("{} (removed)", self.pre.sym(sym).name);
                        pre_names.insert(sym, name);
                    }
                }
                (None, Some(b)) => {
                    let b = &self.post_entities[b];
                    for &sym in std::iter::once(&b.sym).chain(&b.parts) {
                        let name = format!("{} (new)", self.post.sym(sym).name);
                        post_names.insert(sym, name);
                    }
                }
                (None, None) => {}
            }
        }
        let pre_namer = Namer {
            names: &pre_names,
            digest_anonymous: true,
        };
        let post_namer = Namer {
            names: &post_names,
            digest_anonymous: true,
        };

        let mut functions = Vec::new();
        // Per function: its pre symbol.
        let mut function_pre = Vec::new();
        // Changed functions that ftrace cannot redirect (indices into `functions`).
        let mut untraceable = Vec::new();
        let mut data = Vec::new();
        let mut refusals = Vec::new();
        for (a, b) in pairs {
            let guessed = b.is_some_and(|b| indistinct.contains(&b));
            let a = a.map(|i| &self.pre_entities[i]);
            let b = b.map(|i| &self.post_entities[i]);
            let Some(kind) = a.or(b).map(|e| e.kind) else {
                continue;
            };
            let (status, reasons) = match (a, b) {
                (Some(a), Some(b)) => {
                    let reasons = compare(
                        kind,
                        &self.pre.fingerprint(a, &pre_namer),
                        &self.post.fingerprint(b, &post_namer),
                        self.pre.sym(a.sym).is_local() != self.post.sym(b.sym).is_local(),
                    );
                    if reasons.is_empty() {
                        (Status::Unchanged, reasons)
                    } else {
                        (Status::Changed, reasons)
                    }
                }
                (Some(_), None) => (Status::Removed, Vec::new()),
                (None, _) => (Status::New, Vec::new()),
            };
            let pre = a.map(|e| self.pre.info(e.sym));
            let post = b.map(|e| self.post.info(e.sym));
            let name = match (&post, &pre) {
                (Some(info), _) | (None, Some(info)) => info.name.clone(),
                (None, None) => continue,
            };
            let key = |what: &str| format!("{what}:{}:{name}", status.as_str());
            match kind {
                Kind::Function => {
                    match self.function_refusal(a, b, status, &name) {
                        Some(r) => refusals.push(r),
                        None if status == Status::Changed
                            && a.is_some_and(|a| !self.pre.has_fentry(a.sym)) =>
                        {
                            untraceable.push(functions.len());
                        }
                        None => {}
                    }
                    function_pre.push(a.map(|e| e.sym));
                    functions.push(FunctionReport {
                        key: key("function"),
                        status,
                        name: name.clone(),
                        reasons,
                        pre,
                        post,
                        post_parts: b
                            .map(|e| e.parts.iter().map(|&p| self.post.info(p)).collect())
                            .unwrap_or_default(),
                        reached_through: Vec::new(),
                    });
                }
                Kind::Data => {
                    let allowed = status == Status::Changed && {
                        let names = [a, b]
                            .into_iter()
                            .flatten()
                            .map(|e| e.norm.clone())
                            .chain(pre.iter().map(|i| i.name.clone()))
                            .chain(post.iter().map(|i| i.name.clone()));
                        names.into_iter().any(|n| opts.allowed_data.contains(&n))
                    };
                    if status == Status::Changed && !allowed {
                        refusals.push(self.data_refusal(a, &name, &reasons));
                    }
                    data.push(DataReport {
                        key: key("data"),
                        status,
                        name: name.clone(),
                        reasons,
                        pre,
                        post,
                        allowed,
                        indistinct: guessed,
                    });
                }
            }
        }
        self.through_callers(
            untraceable,
            &mut functions,
            &function_pre,
            &mut refusals,
            opts,
        );
        functions.sort_by(|x, y| x.key.cmp(&y.key));
        data.sort_by(|x, y| x.key.cmp(&y.key));
        refusals.sort_by(|x, y| x.key.cmp(&y.key));
        DiffReport {
            functions,
            data,
            refusals,
        }
    }

    fn function_refusal(
        &self,
        pre: Option<&Entity>,
        post: Option<&Entity>,
        status: Status,
        name: &str,
    ) -> Option<Refusal> {
        if !matches!(status, Status::Changed | Status::New) {
            return None;
        }
        let in_init = |elf: &Elf<'_>, e: Option<&Entity>| {
            e.and_then(|e| elf.sym(e.sym).section)
                .is_some_and(|s| elf.class(s) == Class::InitText)
        };
        if in_init(self.pre, pre) || in_init(self.post, post) {
            return Some(refusal(
                RefusalKind::Init,
                name,
                format!("__init function {}", status.as_str()),
                "__init code has already run at boot and was freed; patch the runtime \
                 path that uses its results instead",
            ));
        }
        // Livepatch redirects the old function (pre, as in vmlinux) through its
        // fentry call; a new function is only called, never redirected. A changed
        // function without one may still be reached through its callers
        // ([`Self::through_callers`]).
        None
    }

    /// Changed functions without an fentry call (`inline` ones emitted out of line,
    /// `SYSCALL_DEFINE` bodies) are reached through their callers: when every
    /// reference to one is a direct call or jump from a function of this file, those
    /// callers are patched in its place (transitively, for callers without fentry
    /// themselves) and it is carried, not redirected. Otherwise it is refused, saying
    /// why: a global function (callers elsewhere), its address taken, a caller in a
    /// module's `__init` code.
    fn through_callers(
        &self,
        untraceable: Vec<usize>,
        functions: &mut [FunctionReport],
        function_pre: &[Option<usize>],
        refusals: &mut Vec<Refusal>,
        opts: &DiffOptions,
    ) {
        let by_pre: HashMap<usize, usize> = function_pre
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (s, i)))
            .collect();
        let mut seen: BTreeSet<usize> = untraceable.iter().copied().collect();
        let mut queue: VecDeque<usize> = untraceable.into();
        while let Some(fi) = queue.pop_front() {
            let Some(sym) = function_pre[fi] else {
                continue;
            };
            let name = functions[fi].name.clone();
            let refuse = |why: String| {
                refusal(
                    RefusalKind::Notrace,
                    &name,
                    format!(
                        "changed, and has no call to {FENTRY} (notrace, noinstr or inline); {why}"
                    ),
                    "ftrace cannot redirect it; patch its callers by hand, or leave it as it is",
                )
            };
            if !self.pre.sym(sym).is_local() {
                refusals.push(refuse(
                    "it is global, so callers in other files may reach it and cannot be \
                     patched in its place"
                        .into(),
                ));
                continue;
            }
            let callers = match self.callers_of(sym) {
                Ok(callers) => callers,
                Err(why) => {
                    refusals.push(refuse(why));
                    continue;
                }
            };
            let mut reached = Vec::new();
            let mut failed = None;
            for caller in callers {
                let in_init = self
                    .pre
                    .sym(caller)
                    .section
                    .is_some_and(|s| self.pre.class(s) == Class::InitText);
                let caller_name = self.pre.sym(caller).name.clone();
                if in_init {
                    if opts.init_code_ran {
                        continue;
                    }
                    failed = Some(format!(
                        "{caller_name} calls it from __init code, which runs when the module \
                         loads and cannot be patched"
                    ));
                    break;
                }
                let Some(&ci) = by_pre.get(&caller) else {
                    failed = Some(format!("{caller_name} calls it and is not a function"));
                    break;
                };
                if functions[ci].status == Status::Removed {
                    failed = Some(format!(
                        "{caller_name} calls it and the change removes {caller_name}"
                    ));
                    break;
                }
                let note = format!(
                    "calls {name}, which changed and has no fentry call: patched in its place"
                );
                let f = &mut functions[ci];
                reached.push(f.name.clone());
                if f.status == Status::Unchanged {
                    f.status = Status::Changed;
                    f.key = format!("function:changed:{}", f.name);
                }
                if !f.reasons.contains(&note) {
                    f.reasons.push(note);
                }
                if !self.pre.has_fentry(caller) && seen.insert(ci) {
                    queue.push_back(ci);
                }
            }
            if let Some(why) = failed {
                refusals.push(refuse(why));
                continue;
            }
            if reached.is_empty() {
                refusals.push(refuse(
                    "nothing calls it after boot, so its new version would never run".into(),
                ));
                continue;
            }
            reached.sort();
            reached.dedup();
            functions[fi].reached_through = reached;
        }
    }

    /// The functions of the pre object that call or jump to function `target`
    /// directly, or why it cannot be reached through callers alone.
    fn callers_of(&self, target: usize) -> Result<BTreeSet<usize>, String> {
        let elf = self.pre;
        let t = elf.sym(target);
        let Some(home) = t.section else {
            return Err("it is not defined here".into());
        };
        let mut callers = BTreeSet::new();
        for (index, section) in elf.obj.sections.iter().enumerate() {
            let class = elf.class(index);
            if class == Class::Ignored {
                continue;
            }
            let code = section.is_text();
            for rel in elf.relocs_in(index, 0, section.size) {
                if elf.referent(rel, code) != Some(target) {
                    continue;
                }
                let place = format!("{}+{:#x}", section.name, rel.offset);
                if class == Class::Special {
                    if code {
                        return Err(format!(
                            "alternative replacement code ({place}) refers to it"
                        ));
                    }
                    // An entry that describes its code (unwind, bug, exception table).
                    continue;
                }
                if !code {
                    return Err(format!(
                        "its address is taken in {place}, and a function pointer would \
                         keep reaching the old code"
                    ));
                }
                let caller = elf
                    .symbol_at(index, rel.offset as i64, 0)
                    .filter(|&c| elf.sym(c).is_func())
                    .ok_or_else(|| format!("{place}, outside any function, refers to it"))?;
                if caller == target {
                    continue;
                }
                if !elf.is_call_to(rel, caller, t.value) {
                    return Err(format!(
                        "its address is taken in {} ({place}), and a function pointer would \
                         keep reaching the old code",
                        elf.sym(caller).name
                    ));
                }
                callers.insert(caller);
            }
        }
        // Calls the assembler resolved within a shared section (`.sched.text`).
        for &other in &elf.by_section[home] {
            if other == target || !elf.sym(other).is_func() {
                continue;
            }
            let piece = elf.piece(other);
            for field in elf.resolved_fields(piece) {
                if piece.offset as i64 + field.target != t.value as i64 {
                    continue;
                }
                if !field.branch {
                    return Err(format!(
                        "its address is taken in {}, and a function pointer would keep \
                         reaching the old code",
                        elf.sym(other).name
                    ));
                }
                callers.insert(other);
            }
        }
        Ok(callers)
    }

    fn data_refusal(&self, pre: Option<&Entity>, name: &str, reasons: &[String]) -> Refusal {
        let init = pre
            .and_then(|e| self.pre.sym(e.sym).section)
            .is_some_and(|s| self.pre.class(s) == Class::InitData);
        if init {
            return refusal(
                RefusalKind::Init,
                name,
                format!("__initdata object changed ({})", reasons.join(", ")),
                "__init data was used at boot and freed; patch the runtime path instead",
            );
        }
        refusal(
            RefusalKind::Data,
            name,
            format!("data object changed ({})", reasons.join(", ")),
            "the running kernel keeps its old contents: leave the object as it is and \
             use a shadow variable or a hook (see kmod/include), then allow it with \
             DiffOptions::allowed_data",
        )
    }

    /// Pairs pre and post entities: by normalised name; among several candidates,
    /// first by identical contents and referrers, then referrers, then contents,
    /// then order of appearance.
    /// Pairs pre and post entities; also the post entities that were paired with
    /// one of several candidates that nothing tells apart (same normalised name,
    /// contents and referrers: two `_rs` of one function), a guess.
    fn correlate(&self) -> (Vec<Pair>, BTreeSet<usize>) {
        // (kind, normalised name) → (pre candidates, post candidates).
        type Candidates = (Vec<usize>, Vec<usize>);
        let mut groups: BTreeMap<(Kind, &str), Candidates> = BTreeMap::new();
        for (i, e) in self.pre_entities.iter().enumerate() {
            groups.entry((e.kind, &e.norm)).or_default().0.push(i);
        }
        for (i, e) in self.post_entities.iter().enumerate() {
            groups.entry((e.kind, &e.norm)).or_default().1.push(i);
        }
        let ambiguous = groups.values().any(|(a, b)| a.len() > 1 || b.len() > 1);
        let (pre_keys, post_keys) = if ambiguous {
            (self.pairing_keys(true), self.pairing_keys(false))
        } else {
            (Vec::new(), Vec::new())
        };

        let mut pairs = Vec::new();
        let mut indistinct = BTreeSet::new();
        for (pre, post) in groups.into_values() {
            if pre.len() <= 1 && post.len() <= 1 {
                pairs.push((pre.first().copied(), post.first().copied()));
                continue;
            }
            // Names prove the pairing only where the change left the group's
            // numbering as it was: the same names on both sides.
            let names = |side: &[usize], keys: &[PairingKey]| {
                let mut v: Vec<String> = side.iter().map(|&i| keys[i].name.clone()).collect();
                v.sort_unstable();
                v
            };
            let undisturbed = names(&pre, &pre_keys) == names(&post, &post_keys);
            let mut pre_left: Vec<Option<usize>> = pre.into_iter().map(Some).collect();
            let mut post_left: Vec<Option<usize>> = post.into_iter().map(Some).collect();
            type Stage = fn(&PairingKey, &PairingKey) -> bool;
            // The same name first: where the change did not renumber the unit's
            // statics, each keeps its name, and the pairing is exact.
            let stages: [Stage; 5] = [
                |x, y| x.name == y.name && x.content == y.content && x.referrers == y.referrers,
                |x, y| x.content == y.content && x.referrers == y.referrers,
                |x, y| x.referrers == y.referrers,
                |x, y| x.content == y.content,
                |_, _| true,
            ];
            for (stage, same) in stages.into_iter().enumerate() {
                if stage == 0 && !undisturbed {
                    continue;
                }
                let last = stage + 1 == stages.len();
                for i in 0..pre_left.len() {
                    let Some(a) = pre_left[i] else { continue };
                    let fits =
                        |b: &Option<usize>| b.is_some_and(|b| same(&pre_keys[a], &post_keys[b]));
                    let Some(j) = post_left.iter().position(fits) else {
                        continue;
                    };
                    let b = post_left[j].take().expect("a fitting candidate is left");
                    pre_left[i] = None;
                    // Another candidate on either side would have done as well.
                    let rival_post = post_left.iter().any(fits);
                    let rival_pre = pre_left
                        .iter()
                        .any(|&p| p.is_some_and(|p| same(&pre_keys[p], &post_keys[b])));
                    if stage > 0 && !last && (rival_post || rival_pre) {
                        indistinct.insert(b);
                    }
                    pairs.push((Some(a), Some(b)));
                }
            }
            pairs.extend(pre_left.into_iter().flatten().map(|a| (Some(a), None)));
            pairs.extend(post_left.into_iter().flatten().map(|b| (None, Some(b))));
        }
        (pairs, indistinct)
    }

    /// Per entity of one side: its contents with references by normalised names,
    /// and the normalised names of the functions and objects that refer to it.
    fn pairing_keys(&self, pre: bool) -> Vec<PairingKey> {
        let (elf, list) = if pre {
            (self.pre, &self.pre_entities)
        } else {
            (self.post, &self.post_entities)
        };
        let mut names = HashMap::new();
        let mut owner = HashMap::new();
        for (i, e) in list.iter().enumerate() {
            for &sym in std::iter::once(&e.sym).chain(&e.parts) {
                names.insert(sym, e.norm.clone());
                owner.insert(sym, i);
            }
        }
        let namer = Namer {
            names: &names,
            digest_anonymous: false,
        };
        let mut referrers: Vec<BTreeSet<String>> = vec![BTreeSet::new(); list.len()];
        for e in list {
            for &sym in std::iter::once(&e.sym).chain(&e.parts) {
                let piece = elf.piece(sym);
                let code = e.kind == Kind::Function;
                for rel in elf.relocs_in(piece.section, piece.offset, piece.offset + piece.size) {
                    if let Some(&target) = elf.referent(rel, code).and_then(|t| owner.get(&t)) {
                        referrers[target].insert(e.norm.clone());
                    }
                }
            }
        }
        list.iter()
            .zip(referrers)
            .map(|(e, referrers)| PairingKey {
                name: elf.sym(e.sym).name.clone(),
                content: fnv1a(format!("{:?}", elf.fingerprint(e, &namer)).as_bytes()),
                referrers,
            })
            .collect()
    }
}

#[derive(Debug)]
struct PairingKey {
    /// The symbol's full name (`_rs.5`).
    name: String,
    content: u32,
    referrers: BTreeSet<String>,
}

fn refusal(kind: RefusalKind, name: &str, reason: String, remedy: &str) -> Refusal {
    Refusal {
        key: format!("refuse:{}:{name}", kind.as_str()),
        kind,
        symbol: name.to_owned(),
        reason,
        remedy: remedy.to_owned(),
    }
}
