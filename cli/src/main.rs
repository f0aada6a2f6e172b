//! `talon`: the admin command line. Exit 0 on success, 1 on error (one line on stderr),
//! 2 on usage errors.

use std::process::ExitCode;

use clap::Parser;

/// Whether an error is the reader of our output going away (`talon ... | head`): the
/// command then ends quietly, as a shell tool killed by SIGPIPE does.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    // println! panics when stdout is a closed pipe; that is an end, not a crash.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info)
    }));
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
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("talon: {line}");
            ExitCode::from(1)
        }
    }
}
