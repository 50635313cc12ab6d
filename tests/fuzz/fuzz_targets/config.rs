//! The host's config file (`/etc/kstack/kstack.toml`).
#![no_main]

use kstack_engine::host::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(config) = Config::parse(text)
    {
        let _ = config.state_dir();
        let _ = config.trust.threshold();
    }
});
