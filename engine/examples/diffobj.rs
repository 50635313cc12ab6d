//! Prints the differ's report for two objects: `cargo run -p kstack-engine --example
//! diffobj -- PRE.o POST.o`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pre, post] = args.as_slice() else {
        return Err("usage: diffobj PRE.o POST.o".into());
    };
    let report = kstack_engine::builder::diff::diff_objects(
        &std::fs::read(pre)?,
        &std::fs::read(post)?,
        &Default::default(),
    )?;
    for f in report
        .functions
        .iter()
        .filter(|f| f.status != kstack_engine::builder::diff::Status::Unchanged)
    {
        println!("{} {:?}", f.key, f.reasons);
    }
    for r in &report.refusals {
        println!("{}: {r}", r.key);
    }
    Ok(())
}
