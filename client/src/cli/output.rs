//! The one way the CLI prints its results: a line on stdout. A closed pipe (`zdn … | head`) ends
//! the program quietly instead of panicking. Progress and warnings go to stderr.

/// Prints a line to stdout (`format!` arguments).
macro_rules! say {
    ($($t:tt)*) => { $crate::cli::output::emit(&format!($($t)*)) };
}
pub(crate) use say;

/// Writes one line to stdout; exits quietly when stdout is a closed pipe.
pub fn emit(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}
