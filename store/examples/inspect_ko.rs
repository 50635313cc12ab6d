//! Prints what kstack reads from a `.ko`: its `.modinfo` identity and the functions its
//! `klp_func` tables replace. `cargo run -p kstack-store --example inspect_ko -- FILE.ko`
#![allow(clippy::unwrap_used)] // a diagnostic tool: any failure should stop it loudly

fn main() {
    for path in std::env::args().skip(1) {
        let bytes = std::fs::read(&path).unwrap();
        let info = kstack_store::ident::modinfo(&bytes, &path).unwrap();
        let functions = kstack_store::klp::replaced_functions(&bytes, &path).unwrap();
        println!("{path}");
        println!("  name      {}", info.name);
        println!("  vermagic  {:?}", info.vermagic().unwrap_or(""));
        println!("  livepatch {}", info.is_livepatch());
        for f in functions {
            println!("  replaces  {f}");
        }
    }
}
