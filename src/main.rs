use clap::Parser;

fn main() -> std::process::ExitCode {
    shiftwatch::cli::run(shiftwatch::cli::Cli::parse())
}
