//! Prints the run-pre "before" image of one function of an object, as kstack stores
//! it: `cargo run -p kstack-engine --example before_image -- fs/dcache.o __dentry_kill`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [object, function] = args.as_slice() else {
        return Err("usage: before_image OBJECT.o FUNCTION".into());
    };
    let image = kstack_engine::runpre::before_image(&std::fs::read(object)?, function)?;
    println!("{}", image.to_toml()?);
    Ok(())
}
