//! `Progress`: a byte-counting progress bar on stderr, shown only for people (a terminal, no `--json`).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone)]
pub struct Progress(ProgressBar);

impl Progress {
    /// A bar over `total` bytes, visible when `wanted` and stderr is a terminal.
    pub fn new(total: u64, message: &str, wanted: bool) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        if wanted && std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
        }
        bar.set_message(message.to_owned());
        Progress(bar)
    }

    pub fn hidden() -> Self {
        Progress(ProgressBar::hidden())
    }

    pub fn inc(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
