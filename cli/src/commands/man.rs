//! `kstack man --out DIR` (hidden): the manual pages, made from the clap definitions
//! (`kstack(1)` and one page per command, `kstack-sync(1)` and so on) and from the
//! config's key table (`kstack.toml(5)`). The Debian package is built with them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_mangen::roff::{Roff, bold, italic, roman};
use kstack_engine::host::config::{DEFAULT_CONFIG_PATH, KEYS};

use super::{Cli, GlobalArgs};
use crate::error::{CliError, Kind};
use crate::ui::Ui;

/// Write the manual pages (section 1 and 5) into a directory
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write `*.1` and `kstack.toml.5` into
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn cmd_man(ui: &Ui, _global: &GlobalArgs, args: ManArgs) -> Result<ExitCode, CliError> {
    let fail = |e: std::io::Error| {
        CliError::with_source(
            Kind::User,
            format!("cannot write manual pages to {}", args.out.display()),
            e,
        )
    };
    std::fs::create_dir_all(&args.out).map_err(fail)?;
    clap_mangen::generate_to(Cli::command(), &args.out).map_err(fail)?;
    write_config_page(&args.out).map_err(fail)?;
    ui.status(format!("wrote the manual pages to {}", args.out.display()));
    Ok(ExitCode::SUCCESS)
}

/// `kstack.toml(5)`.
fn write_config_page(dir: &Path) -> std::io::Result<()> {
    let mut page = Roff::new();
    page.control(
        "TH",
        [
            "KSTACK.TOML",
            "5",
            "",
            &format!("kstack {}", env!("CARGO_PKG_VERSION")),
        ],
    );
    page.control("SH", ["NAME"]);
    page.text([roman("kstack.toml - what a host running kstack should run")]);
    page.control("SH", ["SYNOPSIS"]);
    page.text([roman(DEFAULT_CONFIG_PATH)]);
    page.control("SH", ["DESCRIPTION"]);
    page.text([roman(
        "The config file of kstack(1): which store to use, which stack of signed live \
         patches the host runs, which keys are trusted to sign it, the bounds of kstack \
         sync, and how kstack commit signs the modules it builds. It is TOML. Unknown \
         keys and bad values are errors that name the line. --config FILE or \
         KSTACK_CONFIG name another file. A missing config is an error for sync, plan \
         and rollback: a host that declares nothing is never taken to declare no patches.",
    )]);
    let mut section = "";
    for k in KEYS {
        if k.section != section {
            page.control("SH", [format!("[{}]", k.section).as_str()]);
            section = k.section;
        }
        page.control("TP", []);
        // A line troff cannot break (a whole public key) is left to the EXAMPLE.
        let example = if k.example.len() > 48 {
            "(see EXAMPLE)"
        } else {
            k.example
        };
        page.text([bold(k.key), roman(" = "), italic(example)]);
        page.text([roman(k.meaning)]);
        page.control("br", []);
        page.text([roman(format!("Default: {}.", k.default))]);
    }
    page.control("SH", ["EXAMPLE"]);
    page.control("nf", []);
    let mut section = "";
    for k in KEYS {
        if k.section != section {
            if !section.is_empty() {
                page.text([roman("")]);
            }
            page.text([roman(format!("[{}]", k.section))]);
            section = k.section;
        }
        page.text([roman(format!("{} = {}", k.key, k.example))]);
    }
    page.control("fi", []);
    page.control("SH", ["FILES"]);
    page.text([
        roman(DEFAULT_CONFIG_PATH),
        roman(" (a conffile of the Debian package); "),
        roman("/usr/share/doc/kstack/examples/kstack.toml, the example, commented."),
    ]);
    page.control("SH", ["SEE ALSO"]);
    page.text([roman(
        "kstack(1), kstack-sync(1), kstack-status(1), kstack-pull(1), kstack-promote(1), \
         kstack-commit(1), kstack-approve(1), kstack-renew(1)",
    )]);
    std::fs::write(dir.join("kstack.toml.5"), page.render())
}
