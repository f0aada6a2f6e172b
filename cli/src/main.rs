//! `talon`: the admin command line. Exit 0 on success, 1 on error (one line on stderr),
//! 2 on usage errors.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = talon_cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("talon: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(talon_cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("talon: {line}");
            ExitCode::from(1)
        }
    }
}
