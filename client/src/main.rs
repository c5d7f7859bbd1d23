//! The `zdn` binary: the command line lives in the library ([`zdn::cli`]).

fn main() -> std::process::ExitCode {
    zdn::cli::main()
}
