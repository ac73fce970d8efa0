//! `pretext` command line: boots the server.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "pretext",
    version,
    about = "Train self-supervised vision models and watch them live"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (web UI, REST and WebSocket API, training queue).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080", env = "PRETEXT_ADDR")]
        addr: SocketAddr,
        /// Where the SQLite database, checkpoints and dataset cache live.
        #[arg(long, default_value = "./pretext-data", env = "PRETEXT_DATA_DIR")]
        data_dir: PathBuf,
        /// Folder of the web UI's static files.
        #[arg(long, env = "PRETEXT_STATIC_DIR")]
        static_dir: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "pretext=info,tower_http=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            addr,
            data_dir,
            static_dir,
        } => {
            if let Err(e) = serve(addr, data_dir, static_dir).await {
                eprintln!("pretext: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    std::process::ExitCode::SUCCESS
}

async fn serve(
    addr: SocketAddr,
    data_dir: PathBuf,
    static_dir: Option<PathBuf>,
) -> Result<(), String> {
    let mut config = pretext::server::ServerConfig::new(data_dir)?;
    if let Some(dir) = static_dir {
        config.static_dir = dir;
    }
    let state = pretext::server::start(config)
        .await
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tracing::info!(
        "pretext listening on http://{addr} (data dir {})",
        state.data_dir.display()
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    pretext::server::serve(listener, state, shutdown)
        .await
        .map_err(|e| e.to_string())
}
