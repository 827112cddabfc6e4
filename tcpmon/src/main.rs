use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use tcpmon::cli::{Cli, Command, command_for_program_name};

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    if let Some(sub) = args
        .first()
        .and_then(|a| a.to_str())
        .and_then(command_for_program_name)
    {
        args.insert(1, sub.into());
    }
    // The usage text names the program as tcpstat did: `tcpstat` when
    // called by that name.
    let prog = match args.first().and_then(|a| a.to_str()) {
        Some(a) if command_for_program_name(a) == Some("stat") => "tcpstat",
        _ => "tcpmon stat",
    };
    let cli = Cli::parse_from(args);
    // After parsing: `--kernel-log` opens the kernel's target to its level.
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
    let kernel_log = cli.kernel_log().filter();
    if kernel_log != log::LevelFilter::Off {
        logger.filter_module(tcpmon::backend::ebpf::KERNEL_LOG_TARGET, kernel_log);
    }
    logger.init();
    let run = match cli.command {
        Some(Command::Top(args)) => tcpmon::driver::run_top(&args),
        Some(Command::Stat(stat)) => tcpmon::driver::run_stat(&stat.args, prog),
        Some(Command::Peek(args)) => tcpmon::driver::peek::run(&args),
        Some(Command::Peekstat(args)) => tcpmon::driver::peek::stat(&args),
        Some(Command::Export(args)) => tcpmon::driver::export::export(&args),
        Some(Command::Log(args)) => tcpmon::driver::export::log(&args),
        Some(Command::Generate(args)) => {
            tcpmon::cli::generate::run(&args).map(|()| ExitCode::SUCCESS)
        }
        None => tcpmon::driver::run_top(&cli.top),
    };
    match run {
        Ok(code) => code,
        // A reader that went away (`tcpmon top --json ... | head`) ends
        // tcpmon quietly, as cat and ripgrep end.
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpmon: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` comes from writing to a pipe whose reader closed it (Rust
/// ignores SIGPIPE, so the write fails with EPIPE instead of killing us).
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
