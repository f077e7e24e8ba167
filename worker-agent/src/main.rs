//! `morag-agent`: see [`morag_agent::cli`].

fn main() -> std::process::ExitCode {
    morag_agent::cli::main()
}
