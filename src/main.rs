use std::process::ExitCode;

fn main() -> ExitCode {
    launchguard::cli::run()
}
