//! `morag-certs`: create a deployment's CA, issue hub and agent certificates,
//! revoke them. See `morag-certs --help`.

#![forbid(unsafe_code)]

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args, &mut std::io::stdout()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("morag-certs: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
