//! Terminal output: human text, `--json`, and progress bars for anything slow.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug)]
pub struct Ui {
    json: bool,
    quiet: bool,
}

impl Ui {
    pub fn new(json: bool, quiet: bool) -> Self {
        Ui { json, quiet }
    }

    pub fn json(&self) -> bool {
        self.json
    }

    /// A spinner on stderr for a phase of unknown length; hidden with `--json`,
    /// `--quiet` or when stderr is not a terminal (indicatif's own rule).
    pub fn spinner(&self, message: impl Into<String>) -> ProgressBar {
        if self.json || self.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .expect("the template is a constant and valid"),
        );
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    }

    /// A bar with a known number of steps.
    pub fn steps(&self, len: u64, message: impl Into<String>) -> ProgressBar {
        if self.json || self.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]")
                .expect("the template is a constant and valid"),
        );
        bar.set_message(message.into());
        bar
    }

    /// A line of human output on stdout (nothing with `--json`).
    pub fn line(&self, text: impl AsRef<str>) {
        if !self.json {
            println!("{}", text.as_ref());
        }
    }

    /// A status line on stderr (nothing with `--json` or `--quiet`).
    pub fn status(&self, text: impl AsRef<str>) {
        if !self.json && !self.quiet {
            eprintln!("{}", text.as_ref());
        }
    }

    /// One JSON document on one line of stdout (the types are in [`crate::json`]).
    pub fn emit_json(&self, value: &impl serde::Serialize) {
        let text = serde_json::to_string(value)
            .expect("the output types hold strings, numbers, lists and maps only");
        println!("{text}");
    }
}
