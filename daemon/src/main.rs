fn main() -> std::process::ExitCode {
    morag_hub::cli::main()
}
