//! The `chat-zinx` command: the daemon (`serve`, the default), the terminal client (`client`),
//! the admin API's client (`admin`) and the configuration tools (`config`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "chat-zinx",
    version,
    about = "A lean, distributed chat daemon (chat-zinx wire protocol)"
)]
struct Cli {
    /// Configuration file (TOML). Default: /etc/chat-zinx/config.toml when it exists.
    #[arg(long, global = true, value_name = "PATH", env = "CHAT_ZINX_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the chat daemon (the default).
    Serve,
    /// Interactive or scripted terminal client.
    Client(chat_zinx::client::ClientArgs),
    /// The admin API of a node: nodes, a user's sessions, kick, revoke tokens, drain
    /// (docs/operations.md, "Admin API").
    Admin(chat_zinx::client::admin::AdminArgs),
    /// Benchmark real nodes against the raw substrate (see docs/benchmarks.md).
    Bench(chat_zinx::bench::BenchArgs),
    /// Print the effective configuration (secrets redacted), or check a file.
    Config {
        /// Validate this file (defaults < file) and exit: 0 when valid.
        #[arg(long, value_name = "FILE")]
        check: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config),
        Command::Client(args) => runtime(|| async move { chat_zinx::client::run(args).await }),
        Command::Admin(args) => admin(cli.config, args),
        Command::Bench(args) => runtime(|| async move { chat_zinx::bench::run(args).await }),
        Command::Config { check: Some(file) } => match chat_zinx::config::check_file(&file) {
            Ok(_) => {
                println!("{}: valid", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::from(2)
            }
        },
        Command::Config { check: None } => match chat_zinx::config::load(cli.config.as_deref()) {
            Ok(cfg) => {
                print!("{}", cfg.to_redacted_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("chat-zinx: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn serve(config: Option<PathBuf>) -> ExitCode {
    let cfg = match chat_zinx::config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chat-zinx: {e}");
            return ExitCode::from(2);
        }
    };
    chat_zinx::telemetry::init(&cfg.log);
    // Take the sockets systemd passed (socket activation) before anything else opens files.
    let sockets = match chat_zinx::node::systemd::take_activated_sockets() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chat-zinx: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = chat_zinx::node::RunOptions {
        config_path: config,
        sockets,
    };
    runtime(|| async move { chat_zinx::node::run(cfg, options).await })
}

/// `chat-zinx admin`: the URL and token file from the options, else from the configuration.
fn admin(config: Option<PathBuf>, args: chat_zinx::client::admin::AdminArgs) -> ExitCode {
    use chat_zinx::client::admin::{url_of_listen, Defaults};
    let defaults = if args.url.is_some() && args.token_file.is_some() {
        Defaults::default()
    } else {
        match chat_zinx::config::load(config.as_deref()) {
            Ok(c) => Defaults {
                url: Some(url_of_listen(&c.server.http_listen)),
                token_file: c.admin.token_file,
            },
            Err(e) => {
                eprintln!("chat-zinx: {e}");
                return ExitCode::from(2);
            }
        }
    };
    runtime(|| async move { chat_zinx::client::admin::run(args, defaults).await })
}

fn runtime<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat-zinx: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, each said once (a backend error repeats its source's text).
            eprintln!("chat-zinx: {}", chat_zinx::core::error::chain(&*e));
            ExitCode::FAILURE
        }
    }
}
